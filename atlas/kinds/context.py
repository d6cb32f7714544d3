"""What every kind's worker handler receives: the worker's context (its model, loaded once, and
the job's image source, its writer thread), the failure that retrying will not fix, and PNG encoding."""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from atlas.data.open import open_source
from atlas.data.source import ImageSource
from atlas.models import LoadedModel, pick_device
from atlas.plan.spec import ExamplesSpec, JobSpec, ModelSpec

T = TypeVar("T")


class UnitFailed(RuntimeError):
    """A failure that retrying will not fix (NaN during optimization, bad data); recorded as failed."""


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 HxWx3 array -> PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


@dataclass
class WorkerContext:
    """What a worker keeps between units: the model (loaded once) and the job's image source."""

    model: LoadedModel
    examples: ExamplesSpec
    _source: ImageSource | None = field(default=None, repr=False)
    # How the job names its model (weights, folder, stated input): a timeline's other checkpoints
    # load the same way. None: the registry name of `model`, as declared.
    source_model: ModelSpec | None = None
    _checkpoint: tuple[str, LoadedModel] | None = field(default=None, repr=False)
    # Images per physical batch of render units (None: as the device's free memory allows).
    images_per_pass: int | None = None
    # Host-side work of finished units (PNG encoding, tables) on one writer thread, beside the
    # next optimization (see `later`); make_context turns it on where an accelerator is present.
    overlap: bool = False
    _writer: ThreadPoolExecutor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.overlap and self._writer is None:  # one thread, shared by on_checkpoint's copies
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="atlas-writer")

    def later(self, work: Callable[..., T], *args: Any) -> Future[T]:
        """``work(*args)`` on the writer thread with ``overlap``, else at once. Its result, or the
        exception it raised, is the future's either way: a failure surfaces when the unit that
        asked for it is finished (``atlas.run.worker``), never on its own."""
        if self._writer is not None:
            return self._writer.submit(work, *args)
        done: Future[T] = Future()
        try:
            done.set_result(work(*args))
        except Exception as err:  # kept for the unit, as the writer thread keeps it
            done.set_exception(err)
        return done

    def source(self) -> ImageSource:
        """Opened on first use: workers that only render never list the dataset."""
        if self._source is None:
            self._source = open_source(
                self.examples.source, column=self.examples.column, labels=self.examples.label_column
            )
        return self._source

    def on_checkpoint(self, checkpoint: str) -> WorkerContext:
        """This context with another checkpoint's weights, kept until the next one (timeline units)."""
        if self._checkpoint is None or self._checkpoint[0] != checkpoint:
            source = self.source_model or ModelSpec(name=self.model.name)
            model = source.load(self.model.device, checkpoint)
            model.compile = self.model.compile
            self._checkpoint = (checkpoint, model)
        return replace(self, model=self._checkpoint[1])


def compile_backend(choice: str, device: torch.device) -> str:
    """The torch.compile backend for ``execute.compile`` on ``device`` ("" for none): "auto"
    compiles on CUDA only, where it pays (on CPU the one-time compilation outweighs the gain)."""
    if choice == "on" or (choice == "auto" and device.type == "cuda"):
        return "inductor"
    return ""


def make_context(spec: JobSpec, device: str = "auto") -> WorkerContext:
    model = spec.model.load(pick_device(device))
    model.compile = compile_backend(spec.execute.compile, model.device)
    if any(layer.derived for layer in spec.layers):
        from atlas.plan.dictionary import attach_layers

        attach_layers(model, spec.layers)
    # The job's own checkpoint counts as loaded: a timeline's units on it do not load it twice.
    loaded = (str(spec.model.checkpoint), model) if spec.model.checkpoint else None
    return WorkerContext(
        model=model,
        examples=spec.examples,
        source_model=spec.model,
        _checkpoint=loaded,
        overlap=model.device.type != "cpu",
    )
