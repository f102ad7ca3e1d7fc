"""Running headless CellProfiler 4.2.8.1 on chunks of image sets (shared by the groundtruth and features stages).

CellProfiler lives in its own environment (``make setup`` creates the Python 3.9 venv ``.venv-cp``; the
envs/cellprofiler.yaml conda environment puts ``cellprofiler`` on PATH) and reads images with Java
bioformats. Each stage splits its image sets into chunks; one chunk is one CellProfiler process started in
its own folder (:class:`ChunkFolder`) with a LoadData CSV the stage writes. :class:`CellProfilerRunner`
starts those processes from worker threads, keeps their output as a log, takes per-image-set seconds from
CellProfiler's per-module wall times, and stops every running process when one chunk fails;
:meth:`ChunkRun.error` turns a failed process into one error with CellProfiler's own error line, the
command, the kept log and the tail of the output.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from cellresdm.errors import CellResDMError

if TYPE_CHECKING:
    from tqdm import tqdm

#: Where ``make setup`` puts CellProfiler (relative to the repository root).
DEFAULT_CELLPROFILER = ".venv-cp/bin/cellprofiler"
#: JAVA_HOME used when none is set and this JDK exists (CellProfiler 4.2 reads images with Java bioformats).
DEFAULT_JAVA_HOME = "/usr/lib/jvm/java-17-openjdk-amd64"

_TAIL_LINES = 40
_CANCELLED = "CellProfiler run cancelled after another chunk failed"
# CellProfiler prints one line per module run in headless mode, e.g.
# "Tue Jan  2 10:00:00 2024: Image # 3, module SaveImages # 9: CPU_time = 0.01 secs, Wall_time = 0.01 secs"
_MODULE_TIME = re.compile(r"Image # (\d+), module (\S+) # (\d+):.*Wall_time = ([0-9.eE+-]+) secs")

ChunkResult = TypeVar("ChunkResult")


def resolve_cellprofiler(cellprofiler: str | os.PathLike) -> str:
    """Path of the CellProfiler executable; raise CellResDMError with the setup hint if there is none.

    A path with a directory part is taken as is (relative to the working directory); a bare name is
    looked up on PATH (as in the envs/cellprofiler.yaml conda environment, which provides ``cellprofiler``).
    """
    name = str(cellprofiler)
    if os.sep in name or (os.altsep and os.altsep in name):
        found = str(Path(name).absolute()) if Path(name).is_file() and os.access(name, os.X_OK) else None
    else:
        found = shutil.which(name)
    if found is None:
        raise CellResDMError(
            f"CellProfiler executable not found: {name!r} (working directory {Path.cwd()}). Run `make setup` "
            "to create the CellProfiler 4.2.8.1 environment (.venv-cp), or run the rule with the conda env "
            "envs/cellprofiler.yaml (snakemake --sdm conda) and set groundtruth.cellprofiler: cellprofiler."
        )
    return found


def cellprofiler_environment() -> dict[str, str]:
    """This process's environment plus what headless CellProfiler needs: a JAVA_HOME and a non-GUI
    matplotlib backend."""
    env = dict(os.environ)
    if not env.get("JAVA_HOME") and Path(DEFAULT_JAVA_HOME).is_dir():
        env["JAVA_HOME"] = DEFAULT_JAVA_HOME
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _error_line(path: Path) -> str:
    """Last line of CellProfiler's output that names an error, or ''."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [ln.strip() for ln in lines if re.match(r"^\s*[\w.]*(Error|Exception)\b", ln)]
    return errors[-1] if errors else ""


def _tail(path: Path, n: int = _TAIL_LINES) -> str:
    """Last ``n`` lines of CellProfiler's output."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no CellProfiler output)"
    return "\n".join(lines[-n:])


@dataclass(frozen=True)
class ChunkFolder:
    """Folder of one CellProfiler process: ``work/chunk{k:04d}``, also its input folder and working directory.

    The stage writes the LoadData CSV to :attr:`data_file` (and any images it needs) before the run.
    """

    root: Path

    @classmethod
    def create(cls, work: Path, chunk: int) -> ChunkFolder:
        """Make the folder of chunk ``chunk`` under ``work`` with its (empty) output and temporary folders."""
        folder = cls(work / f"chunk{chunk:04d}")
        folder.output.mkdir(parents=True)
        folder.temp.mkdir()
        return folder

    @property
    def data_file(self) -> Path:
        """The LoadData CSV CellProfiler reads (``--data-file``)."""
        return self.root / "load_data.csv"

    @property
    def output(self) -> Path:
        """CellProfiler's default output folder (``-o``): saved images and exported CSVs."""
        return self.root / "out"

    @property
    def temp(self) -> Path:
        """CellProfiler's temporary folder (``-t``)."""
        return self.root / "tmp"

    @property
    def log_file(self) -> Path:
        """CellProfiler's stdout and stderr."""
        return self.root / "cellprofiler.log"


@dataclass(frozen=True)
class ChunkRun:
    """One CellProfiler process that ran to its end.

    Attributes:
        command: its command line.
        returncode: its exit status.
        log_file: its stdout and stderr.
        elapsed: seconds from start to exit (JVM start and pipeline load included).
        module_seconds: {image set number (1-based): sum of CellProfiler's module wall times}.
        last_image_set: number of the last image set CellProfiler reported a module time for (0: none).
    """

    command: list[str]
    returncode: int
    log_file: Path
    elapsed: float
    module_seconds: dict[int, float]
    last_image_set: int

    def error(self, missing_outputs: str, context: str, kept_log: Path) -> CellResDMError:
        """The error of a failed run; copies its log to ``kept_log`` (the run's folder is temporary).

        Args:
            missing_outputs: what went wrong when CellProfiler exited with status 0 (e.g. ``did not write
                ['Image.csv']``); a non-zero status is reported instead.
            context: where, e.g. ``on chunk 3 (250 fields, r01c01f01..r02c05f09)`` and what is lacking.
            kept_log: where to keep the full log.

        Returns:
            ``CellProfiler {what} {context}.`` followed by CellProfiler's last error line, the command, the
            kept log's path and the last lines of the output.
        """
        kept_log.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.log_file, kept_log)
        what = f"exited with status {self.returncode}" if self.returncode != 0 else missing_outputs
        error = _error_line(self.log_file)
        return CellResDMError(
            f"CellProfiler {what} {context}.\n"
            + (f"CellProfiler error: {error}\n" if error else "")
            + f"Command: {' '.join(self.command)}\n"
            f"Full log: {kept_log}\nLast lines of its output:\n{_tail(self.log_file)}"
        )


class CellProfilerRunner:
    """Runs one CellProfiler pipeline on chunks from several threads; one failure stops the other processes.

    Args:
        executable: CellProfiler executable (from :func:`resolve_cellprofiler`).
        pipeline: the ``.cppipe`` file.
        log: logger of the per-chunk timing lines.
        progress_bar: advanced by one per finished image set, or None.
    """

    def __init__(self, executable: str, pipeline: Path, log: logging.Logger, progress_bar: tqdm | None) -> None:
        self.executable, self.pipeline, self.log, self.progress_bar = executable, pipeline, log, progress_bar
        self._processes: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._stopping = False

    def stop(self) -> None:
        """Terminate the running processes and refuse to start new ones."""
        with self._lock:
            self._stopping = True
            for process in self._processes:
                if process.poll() is None:
                    process.terminate()

    def _advance(self) -> None:
        if self.progress_bar is not None:
            self.progress_bar.update(1)

    def run(self, folder: ChunkFolder) -> ChunkRun:
        """Run CellProfiler headless on ``folder``'s LoadData CSV and wait for it to exit.

        Raises:
            CellResDMError: CellProfiler cannot be started, or the runner was stopped (before or during the
                run) because another chunk failed. A failure of the run itself is left to the caller, who
                knows which outputs to expect (:meth:`ChunkRun.error`).
        """
        command = [self.executable, "-c", "-r", "-p", str(self.pipeline), "--data-file", str(folder.data_file)]
        command += ["-i", str(folder.root), "-o", str(folder.output), "-t", str(folder.temp)]
        module_seconds: dict[int, float] = {}
        start = time.perf_counter()
        with open(folder.log_file, "w") as stream:
            with self._lock:
                if self._stopping:
                    raise CellResDMError(_CANCELLED)
                try:
                    process = subprocess.Popen(
                        command,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                        env=cellprofiler_environment(),
                        cwd=folder.root,
                    )
                except OSError as exc:
                    raise CellResDMError(f"cannot start CellProfiler ({' '.join(command)}): {exc}") from exc
                self._processes.append(process)
            last_image_set = 0
            assert process.stdout is not None
            for line in process.stdout:
                stream.write(line)
                match = _MODULE_TIME.search(line)
                if match:
                    image_set = int(match.group(1))
                    module_seconds[image_set] = module_seconds.get(image_set, 0.0) + float(match.group(4))
                    if image_set > last_image_set:  # a new image set started: the previous one is done
                        if last_image_set:
                            self._advance()
                        last_image_set = image_set
            returncode = process.wait()
        elapsed = time.perf_counter() - start
        if self._stopping and returncode != 0:  # terminated by stop(): the other chunk's error is the one to raise
            raise CellResDMError(_CANCELLED)
        return ChunkRun(command, returncode, folder.log_file, elapsed, module_seconds, last_image_set)

    def finish(self, run: ChunkRun, image_sets: Sequence[str], label: str) -> dict[str, float]:
        """Book a successful run: count its last image set as done, log its timing and return
        {image set: seconds}.

        An image set's seconds are its module wall times; the JVM start and pipeline load are shared by the
        chunk and spread evenly on its image sets. ``label`` names the chunk in the log (``chunk 3``).
        """
        if run.last_image_set:
            self._advance()
        n = len(image_sets)
        modules = sum(run.module_seconds.values())
        overhead = max(run.elapsed - modules, 0.0) / n
        seconds = {name: run.module_seconds.get(k + 1, modules / n) + overhead for k, name in enumerate(image_sets)}
        self.log.info(
            "CellProfiler %s: %d image sets in %.1f s (%.2f s per image set in modules, %.1f s other)",
            label,
            n,
            run.elapsed,
            modules / n,
            run.elapsed - modules,
        )
        return seconds

    def run_parallel(
        self,
        job: Callable[[int], ChunkResult],
        n_chunks: int,
        workers: int,
        on_result: Callable[[int, ChunkResult], None],
    ) -> None:
        """Run ``job(k)`` for chunks 0..n_chunks-1 on ``workers`` threads.

        ``on_result(k, result)`` runs in this thread as each chunk ends. The first error (of a job or of
        ``on_result``) stops the running CellProfiler processes, cancels the chunks not started and is raised.
        """
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(job, k): k for k in range(n_chunks)}
            pending = set(futures)
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in done:
                        on_result(futures[future], future.result())
            except BaseException:
                self.stop()
                for future in pending:
                    future.cancel()
                raise
