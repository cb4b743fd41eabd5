"""Callbacks: code that ``Trainer.fit`` runs at fixed points of its loop.

Subclass :class:`Callback`, override the hooks you need and pass instances to
``fit(..., callbacks=[...])``. Every hook receives the trainer, so a callback can read and
change anything on it (``trainer.model``, ``trainer.optimizer.lr``, ``trainer.history``)::

    class PrintLR(fastlayers.Callback):
        def on_epoch_end(self, trainer, record):
            record["lr_next"] = trainer.optimizer.lr     # lands in trainer.history

The hooks of one ``fit``, in order (callbacks in the order of the list, the ``lr_schedule``
first)::

    on_fit_begin(trainer)
    for each epoch:
        on_epoch_begin(trainer, epoch)
        for each step:
            on_batch_begin(trainer, step)        # before the training step
            on_batch_end(trainer, step, loss)    # after the optimizer update
        on_epoch_end(trainer, record)            # after validation; record is in history
    on_fit_end(trainer)

``epoch`` counts over every ``fit`` of the trainer (1, 2, ...), ``step`` within the epoch
(1, 2, ...; ``trainer.optimizer.steps`` counts the updates over the whole run). Keys that
``on_epoch_end`` adds to ``record`` stay in the history and in training checkpoints (keep
them JSON-ready: numbers, strings, lists, dicts). Setting ``trainer.stop_training = True``
in any hook ends the run at the end of the current epoch (the epoch is completed, recorded
and checkpointed) with ``trainer.stop_reason`` naming the callback and hook, unless the
callback set ``trainer.stop_reason`` to a text of its own. An exception raised by a hook
propagates out of ``fit`` unchanged; ``on_fit_end`` then does not run.

**Checkpoints.** A callback whose ``state_dict()`` returns something other than None (a
JSON-ready dict) has that state written into every training checkpoint, and
``fit(resume=True)`` hands it back to ``load_state_dict`` before the run continues, so that
a resumed run is the uninterrupted one. The callbacks with state are matched by their order
and class name: resuming with a different list of them is a ``CheckpointError``, as is a
``load_state_dict`` that raises ``TypeError``, ``ValueError`` or ``KeyError`` (validate the
state there; nothing is changed when it refuses). A run resumed from inside an epoch goes on
with ``on_batch_begin`` of the next step: ``on_epoch_begin`` of that epoch ran before the
checkpoint and its effects are in the saved state. Callbacks without state are simply
called again in the new process.
"""

from __future__ import annotations

__all__ = ["Callback"]


class Callback:
    """Base class of the callbacks of ``Trainer.fit``; every hook does nothing by default."""

    def on_fit_begin(self, trainer) -> None:
        """After ``fit`` has checked its arguments and, with ``resume=True``, loaded the checkpoint."""

    def on_fit_end(self, trainer) -> None:
        """After the last epoch (also when training stopped early)."""

    def on_epoch_begin(self, trainer, epoch: int) -> None:
        """Before the first step of ``epoch``: the place to set a per-epoch learning rate."""

    def on_epoch_end(self, trainer, record: dict) -> None:
        """After the epoch and its validation; ``record`` (the history entry) may be extended."""

    def on_batch_begin(self, trainer, step: int) -> None:
        """Before training step ``step`` of the epoch: the place to set a per-step learning rate."""

    def on_batch_end(self, trainer, step: int, loss: float) -> None:
        """After step ``step`` of the epoch and its optimizer update; ``loss`` is the batch's loss."""

    def state_dict(self) -> dict | None:
        """The callback's state as JSON-ready data, or None for a callback without state."""
        return None

    def load_state_dict(self, state: dict) -> None:
        """Restores what ``state_dict`` returned; raise ValueError or TypeError if it does not fit."""
        raise NotImplementedError(f"{type(self).__name__} has state (state_dict) but no load_state_dict")
