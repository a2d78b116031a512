"""The LoRA / QLoRA training recipe: `setup / train / save_checkpoint / cleanup` and `main(cfg)`.

One self-contained loop in the torchtune style, no Trainer hierarchy. The same file runs alone,
under `torchrun --nproc-per-node N` (DDP) and under `accelerate launch` (DDP, or FSDP sharding
with an FSDP config; see `engine.training.sharding`), gloo on CPU and nccl on CUDA; rank 0 alone
writes checkpoints, logs and outputs. Every step emits an event (step, loss, learning rate,
tokens/s, ETA) to a callback; `engine.training.run` prints them as JSON lines for the daemon and
the CLI draws a progress bar from them.

Determinism, so that a resumed run matches an uninterrupted one: the data order is a pure
function of (seed, step) — which sequences a step trains on never depends on what ran before —
and a checkpoint holds the trainable weights, optimizer, scheduler and every process's RNG
states. This module knows nothing of the daemon or the console.
"""

from __future__ import annotations

import dataclasses
import json
import random
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.data import TrainingData, build_training_data, collate, pack_samples
from engine.errors import ConfigError, DataError
from engine.paths import dirs
from engine.training import checkpoint as ckpt
from engine.training import distributed, sharding
from engine.training.loss import STATS_SIZE, LossModel, summarise, to_device
from engine.training.model import Placement, build_model, resolve_device
from engine.training.plot import write_loss_png
from engine.training.precision import AUTO, PrecisionChoice, resolve_precision

STOPPED_EXIT_CODE = 143  # 128 + SIGTERM: stopped on request, a checkpoint was written
Event = dict[str, Any]


@dataclass
class RunConfig:
    """What one training run is asked to do (the profile plus the command line)."""

    profile: Any
    run_dir: Path | None = None
    data: Path | None = None  # scenes JSONL; None: the demo corpus
    mode: str | None = None  # overrides profile.training.mode
    max_steps: int | None = None  # overrides profile.training.max_steps
    resume: bool = False
    stop_at_step: int | None = None  # stop (with a checkpoint) after this step, as SIGTERM would
    on_event: Callable[[Event], None] | None = None


@dataclass
class RunResult:
    """What a finished (or stopped) run produced."""

    run_dir: Path
    adapter_dir: Path | None
    final_loss: float | None
    eval_loss: float | None
    base_eval_loss: float | None
    stopped: bool = False
    steps: int = 0
    losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir),
                "adapter_dir": str(self.adapter_dir) if self.adapter_dir else None,
                "final_loss": self.final_loss, "eval_loss": self.eval_loss}


def default_run_dir(profile: Any, mode: str) -> Path:
    """`<state>/runs/<time>-<profile>-<mode>`."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return dirs().state / "runs" / f"{stamp}-{profile.name}-{mode}"


def load_scenes(path: Path | None, profile: Any, hypertokenizer: Any
                ) -> tuple[list[Any], list[Any]]:
    """Scenes from a JSONL file or the demo corpus, and the file's bad lines (skipped).

    Raises:
        DataError: the file is missing or holds no valid scene.
    """
    if path is None:
        from engine.data.demo import demo_scenes

        return demo_scenes(profile, hypertokenizer.hf), []
    from engine.scenes.io import read_scenes

    if not Path(path).is_file():
        raise DataError(f"scene file {path} does not exist")
    errors: list[Any] = []
    scenes = list(read_scenes(path, errors))
    if errors and not scenes:
        raise DataError(f"{path}: no valid scene; first problem: {errors[0]}")
    return scenes, errors


def fingerprint(profile: Any, mode: str, max_steps: int, processes: int,
                precision: str | None = None) -> dict[str, Any]:
    """What must not change between a run and its resume (everything that shapes the numbers).

    `precision` is the one the run uses (what `auto` resolved to), so that a run resumed where
    `auto` picks otherwise is refused rather than continued in other numerics.
    """
    data = profile.to_dict()
    training = dict(data["training"])
    # The strategy shapes no number (DDP and FSDP take the same steps) and checkpoints hold whole
    # tensors either way, so a run may resume under the other one.
    for knob in ("eval_every", "early_stopping_patience", "checkpoint_every", "keep_checkpoints",
                 "strategy"):
        training.pop(knob)
    training.update(mode=mode, max_steps=max_steps)
    return {"model": data["model"], "precision": precision or data["device"]["precision"],
            "tokenizer": data["tokenizer"], "scenes": data["scenes"], "lora": data["lora"],
            "training": training, "system_prompt": data["inference"]["system_prompt"],
            "processes": processes}


def load_resume_state(path: Path) -> dict[str, Any]:
    """A checkpoint's `state.pt`, loaded with `weights_only=True`: tensors, dicts, lists and
    plain numbers only, so a crafted file cannot run code when a run is resumed.

    Raises:
        DataError: the file holds anything else (a pickled object), or is not a state file.
    """
    try:
        state = torch.load(path, weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise DataError(f"cannot resume from {path}: it is not a plain training state "
                        f"({type(error).__name__}: {str(error).splitlines()[0][:200]})",
                        hint="a state.pt holds only tensors, numbers, lists and dicts; "
                             "start a new run, or resume from a checkpoint this version "
                             "wrote") from None
    if not isinstance(state, dict):
        raise DataError(f"cannot resume from {path}: it holds a {type(state).__name__}, "
                        "not a training state", hint="start a new run")
    return state


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} (run) vs {new!r} (now)"]


class LoRARecipe:
    """One training run. Call `setup()`, `train()`, then `cleanup()`; `main(cfg)` does all three."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.profile = cfg.profile
        self.section = cfg.profile.training
        self.world = distributed.world_from_env()
        self.stop_requested = False
        self.stop_reason = ""
        self.history: list[dict[str, Any]] = []
        self.metrics_file: Any = None
        self.early_stopped = False
        self.checkpointed_step = -1

    # --- events -------------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Send an event to the callback and `metrics.jsonl` (rank 0 only)."""
        if not self.world.is_main:
            return
        if self.metrics_file is not None:
            self.metrics_file.write(json.dumps({"time": round(time.time(), 3), **event}) + "\n")
            self.metrics_file.flush()
        if self.cfg.on_event is not None:
            self.cfg.on_event(event)

    def log(self, message: str) -> None:
        self.emit({"event": "log", "message": message})

    def request_stop(self, reason: str = "stop requested") -> None:
        """Stop after the current step, writing a checkpoint (safe from a signal handler)."""
        self.stop_requested = True
        self.stop_reason = reason

    # --- setup --------------------------------------------------------------------------------

    def setup(self) -> None:
        """Load data, tokenizer and model; restore a checkpoint when resuming."""
        from engine.tokenizer import Hypertokenizer

        section = self.section
        wanted = self.profile.device.precision
        placement = resolve_device(self.profile.device.device, wanted, self.world.local_rank)
        distributed.init(self.world, placement.device)
        # Rank 0 decides (the probe is cached per machine) so that every process agrees.
        self.precision: PrecisionChoice = distributed.broadcast_object(
            resolve_precision(wanted, placement.device) if self.world.is_main else None,
            self.world)
        self.placement: Placement = dataclasses.replace(placement,
                                                        precision=self.precision.precision)
        self.mode = self.cfg.mode or section.mode
        self.run_dir = Path(self.cfg.run_dir or default_run_dir(self.profile, self.mode))
        self.run_dir = Path(distributed.broadcast_object(str(self.run_dir), self.world))
        if self.world.is_main:
            self._prepare_run_dir()
        if self.placement.note:
            self.log(self.placement.note)
        if self.precision.requested == AUTO:
            self.log(f"precision auto: {self.precision.precision}, because "
                     f"{self.precision.reason}")
        torch.manual_seed(section.seed)
        random.seed(section.seed)
        if self.profile.device.threads:
            torch.set_num_threads(self.profile.device.threads)

        self.hypertokenizer = Hypertokenizer.from_profile(self.profile)
        scenes, bad_lines = load_scenes(self.cfg.data, self.profile, self.hypertokenizer)
        if bad_lines:
            self.log(f"{self.cfg.data}: {len(bad_lines)} bad line(s) skipped, "
                     f"{len(scenes)} scenes kept; "
                     + "; ".join(str(error) for error in bad_lines[:5]))
        self.data: TrainingData = build_training_data(self.profile, self.hypertokenizer, scenes,
                                                      self.mode)
        self._plan_batches()
        if self.data.stats.truncated:
            self.log(f"{self.data.stats.truncated} samples were longer than training.max_seq_len "
                     f"= {section.max_seq_len} and were cut (longest: "
                     f"{self.data.stats.longest} tokens)")

        self.strategy = sharding.resolve_strategy(section.strategy, self.world,
                                                  self.placement.precision)
        self.peft_model = build_model(self.profile, self.hypertokenizer, self.placement)
        self.loss_model: torch.nn.Module = sharding.wrap(
            LossModel(self.peft_model), self.strategy, self.world, self.placement.device,
            self.peft_model.get_base_model())
        # After wrapping: FSDP replaces each parameter by its shard (a DTensor).
        trainable = [p for p in self.peft_model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=section.learning_rate, weight_decay=0.0)
        from transformers import get_cosine_schedule_with_warmup

        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer, min(section.warmup_steps, self.max_steps), self.max_steps)
        self.fingerprint = fingerprint(self.profile, self.mode, self.max_steps, self.world.size,
                                       self.placement.precision)
        self.step = 0
        self.tokens_seen = 0
        self.train_seconds = 0.0
        self.best_eval: float | None = None
        self.base_eval: float | None = None
        self.last_eval: float | None = None
        self.evals_without_gain = 0
        self.losses: list[float] = []
        if self.cfg.resume:
            self._restore()
        elif self.world.is_main:
            self._write_json("run.json", {"fingerprint": self.fingerprint,
                                          "data_sha256": self.data.data_sha256})
        self.log(f"{len(self.data.train)} training samples in {len(self.train_packs)} sequences, "
                 f"{len(self.data.held_out)} held out; {self.max_steps} steps on "
                 f"{self.placement.device} ({self.placement.precision}), "
                 f"{self.world.size} process(es)"
                 + (f" ({self.strategy.upper()})" if self.world.distributed else "")
                 + f"; {self._trainable_summary()}")

    def _trainable_summary(self) -> str:
        trainable = sum(p.numel() for p in self.peft_model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.peft_model.parameters())
        return f"{trainable:,} of {total:,} parameters train"

    def _prepare_run_dir(self) -> None:
        if not self.cfg.resume and ckpt.list_checkpoints(self.run_dir):
            raise ConfigError(f"{self.run_dir} already holds a run with checkpoints",
                              hint="resume it with --resume, or choose another run directory")
        if self.cfg.resume and not ckpt.list_checkpoints(self.run_dir):
            raise ConfigError(f"{self.run_dir} has no checkpoint to resume from",
                              hint="start a new run without --resume")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_file = (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8")

    def _plan_batches(self) -> None:
        section = self.section
        self.micro_batch = section.batch_size
        self.per_step = section.batch_size * section.grad_accum * self.world.size
        self.train_packs = pack_samples(self.data.train, section.max_seq_len, section.seed,
                                        section.packing)
        self.eval_packs = pack_samples(self.data.held_out, section.max_seq_len, section.seed,
                                       section.packing)
        if len(self.train_packs) < self.per_step:
            raise DataError(
                f"the data gives {len(self.train_packs)} training sequence(s) "
                f"({len(self.data.train)} samples), but one step needs {self.per_step} "
                f"(batch_size {section.batch_size} x grad_accum {section.grad_accum} x "
                f"{self.world.size} process(es))",
                hint=f"give at least {self.per_step} sequences' worth of scenes "
                     f"(with packing, about {self.per_step * section.max_seq_len} tokens), "
                     "or lower training.batch_size")
        self.steps_per_epoch = len(self.train_packs) // self.per_step
        wanted = self.cfg.max_steps if self.cfg.max_steps is not None else section.max_steps
        self.max_steps = wanted or section.epochs * self.steps_per_epoch
        self.pad_id = self._pad_id()

    def _pad_id(self) -> int:
        hf = self.hypertokenizer.hf
        for candidate in (hf.pad_token_id, hf.eos_token_id, 0):
            if candidate is not None:
                return int(candidate)
        return 0

    # --- data order ---------------------------------------------------------------------------

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.train_packs)))
        random.Random(f"hyperlex-order:{self.section.seed}:{epoch}").shuffle(order)
        return order

    def micro_batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        """This process's micro-batches for optimizer step `step` (0-based): a function of step."""
        epoch, within = divmod(step, self.steps_per_epoch)
        order = self._epoch_order(epoch)
        start = within * self.per_step
        out = []
        for micro in range(self.section.grad_accum):
            first = start + (micro * self.world.size + self.world.rank) * self.micro_batch
            chosen = [self.train_packs[i] for i in order[first:first + self.micro_batch]]
            out.append(collate(self.data.train, chosen, self.pad_id,
                               self.section.register_weights))
        return out

    # --- training -----------------------------------------------------------------------------

    def prepare_steps(self) -> None:
        """What the steps need of the process and setup does not do: on CPU, freed memory kept.

        Not in setup: it is for the steps, not for loading. `train` calls it; a caller that
        runs `_train_step` itself (a benchmark, a profile) calls it first.
        """
        if self.placement.device == "cpu":
            from engine.training.allocator import keep_freed_memory

            self.log(keep_freed_memory())

    def train(self) -> RunResult:
        """Run until max_steps, early stopping or a stop request; then write the outputs."""
        self.prepare_steps()
        if self.step == 0 and self.data.held_out:
            self.base_eval = self.evaluate()["loss"]
            self.last_eval = self.base_eval
        self.peft_model.train()
        started_at_step = self.step
        while self.step < self.max_steps:
            begun = time.perf_counter()
            loss, tokens = self._train_step(self.micro_batches(self.step))
            self.step += 1
            elapsed = time.perf_counter() - begun
            self.train_seconds += elapsed
            self.tokens_seen += tokens
            self.losses.append(loss)
            done_here = self.step - started_at_step
            eta = (self.max_steps - self.step) * self.train_seconds / max(done_here, 1)
            self.emit({"event": "step", "step": self.step, "max_steps": self.max_steps,
                       "loss": loss, "lr": self.scheduler.get_last_lr()[0],
                       "tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0,
                       "eta_s": eta})
            self._after_step()
            if self._should_stop():
                break
        return self._finish()

    def _train_step(self, batches: list[dict[str, torch.Tensor]]) -> tuple[float, int]:
        device = self.placement.device
        local_labels = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
        local_tokens = sum(int(b["lengths"].sum()) for b in batches)
        global_labels, global_tokens = distributed.sum_across(
            [float(local_labels), float(local_tokens)], self.world)
        if global_labels == 0:
            raise DataError("a training step has no labelled token", hint="check the data")
        total = torch.zeros((), dtype=torch.float64)
        for index, batch in enumerate(batches):
            last = index == len(batches) - 1
            with sharding.gradient_sync(self.loss_model, enabled=last):
                out = self.loss_model(to_device(batch, device))
                # DDP and FSDP both average gradients over processes; scaling by the world size
                # makes the result the gradient of (sum of token losses) / (labelled tokens in
                # the step), the same as one process with the whole batch.
                (out["loss_sum"] * (self.world.size / global_labels)).backward()
            total += out["loss_sum"].detach().double().cpu()
        if self.section.max_grad_norm > 0:
            sharding.clip_grad_norm(
                [p for p in self.peft_model.parameters() if p.requires_grad],
                self.section.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        (step_sum,) = distributed.sum_across([float(total)], self.world)
        return step_sum / global_labels, int(global_tokens)

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Held-out loss (overall, field and text tokens, per register), summed over processes."""
        if not self.eval_packs:
            return {"loss": None}
        self.peft_model.eval()
        stats = torch.zeros(STATS_SIZE, dtype=torch.float64)
        mine = self.eval_packs[self.world.rank::self.world.size]
        batches = range(0, len(mine), self.micro_batch)
        rounds = len(batches)
        if self.strategy == "fsdp":
            # FSDP gathers each layer's weights from every process, so every process must run
            # as many forward passes: one with fewer held-out sequences repeats one and drops
            # its stats. Rank 0 holds the most: ceil(sequences / processes).
            most = -(-len(self.eval_packs) // self.world.size)
            rounds = -(-most // self.micro_batch)
        for round_index in range(rounds):
            extra = round_index >= len(batches)
            chosen = (self.eval_packs[:1] if extra else
                      mine[batches[round_index]:batches[round_index] + self.micro_batch])
            batch = collate(self.data.held_out, chosen, self.pad_id)
            out = self._unwrapped()(to_device(batch, self.placement.device))["stats"]
            if not extra:
                stats += out
        sharding.after_no_grad_forward(self.loss_model)
        self.peft_model.train()
        summary = summarise(distributed.sum_across(stats.tolist(), self.world))
        self.emit({"event": "eval", "step": self.step, "eval_loss": summary["loss"],
                   "field_loss": summary["field_loss"], "text_loss": summary["text_loss"],
                   "per_register": summary["per_register"]})
        return summary

    def _unwrapped(self) -> LossModel:
        return sharding.unwrapped(self.loss_model)  # type: ignore[return-value]

    def _after_step(self) -> None:
        section = self.section
        if section.eval_every and self.step % section.eval_every == 0 and self.step < self.max_steps:
            result = self.evaluate()
            self.last_eval = result["loss"]
            if result["loss"] is not None:
                if self.best_eval is None or result["loss"] < self.best_eval - 1e-6:
                    self.best_eval = result["loss"]
                    self.evals_without_gain = 0
                else:
                    self.evals_without_gain += 1
                if (section.early_stopping_patience
                        and self.evals_without_gain >= section.early_stopping_patience):
                    self.request_stop("early stopping: held-out loss did not improve in "
                                      f"{self.evals_without_gain} evaluations")
                    self.early_stopped = True
        if (section.checkpoint_every and self.step % section.checkpoint_every == 0
                and self.step < self.max_steps):
            self.save_checkpoint()
        if self.cfg.stop_at_step is not None and self.step >= self.cfg.stop_at_step:
            self.request_stop(f"stop requested at step {self.step}")

    def _should_stop(self) -> bool:
        (flag,) = distributed.sum_across([1.0 if self.stop_requested else 0.0], self.world)
        return flag > 0

    # --- checkpoints --------------------------------------------------------------------------

    def _rng_state(self) -> dict[str, Any]:
        """Every RNG's state as plain values and tensors: `state.pt` is loaded with
        `weights_only=True`, which refuses numpy arrays and arbitrary objects."""
        import numpy as np

        version, internal, gauss = random.getstate()
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {"python": [version, list(internal), gauss],
                 "numpy": [str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                           int(pos), int(has_gauss), float(cached)],
                 "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        import numpy as np

        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos,
                             has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trainable tensors by name, whole (the part of the model a checkpoint must hold).

        Under FSDP every process must call this: the shards are gathered from all of them.
        """
        return sharding.full_tensors({name: param for name, param
                                      in self.peft_model.named_parameters()
                                      if param.requires_grad})

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 writes; every rank gives its RNG).

        Under FSDP every rank first gives its shards of the weights and optimizer state, so the
        checkpoint holds whole tensors, the same files as one process writes. A failed write (a
        full disk) is reported and training goes on: the previous checkpoint is untouched, and
        the next one may succeed.
        """
        self.checkpointed_step = self.step  # every rank, so that all agree without talking
        rng_states = distributed.gather_objects(self._rng_state(), self.world)
        sharded = self.strategy == "fsdp"
        weights = self.trainable_state() if sharded or self.world.is_main else {}
        optimizer_state = (sharding.full_optimizer_state(self.optimizer) if sharded
                           else self.optimizer.state_dict())
        if not self.world.is_main:
            return None
        from safetensors.torch import save_file

        state = {"step": self.step, "optimizer": optimizer_state,
                 "scheduler": self.scheduler.state_dict(), "rng": rng_states,
                 "tokens_seen": self.tokens_seen, "train_seconds": self.train_seconds,
                 "best_eval": self.best_eval, "base_eval": self.base_eval,
                 "last_eval": self.last_eval, "evals_without_gain": self.evals_without_gain,
                 "losses": self.losses}

        def write(directory: Path) -> None:
            save_file(weights, str(directory / "trainable.safetensors"))
            torch.save(state, directory / "state.pt")

        meta = {"eval_loss": self.last_eval, "data_sha256": self.data.data_sha256,
                "fingerprint": self.fingerprint}
        try:
            path = ckpt.write_checkpoint(self.run_dir, self.step, write, meta)
        except OSError as error:
            previous = ckpt.latest_checkpoint(self.run_dir)
            self.log(f"checkpoint at step {self.step} failed: {error.strerror or error}; "
                     + (f"{previous} is still valid" if previous else "no earlier checkpoint"))
            return None
        ckpt.prune(self.run_dir, self.section.keep_checkpoints)
        self.emit({"event": "checkpoint", "step": self.step, "path": str(path)})
        return path

    def _restore(self) -> None:
        from safetensors.torch import load_file

        saved = json.loads((self.run_dir / "run.json").read_text())
        problems = _differences(saved["fingerprint"], self.fingerprint)
        if saved["data_sha256"] != self.data.data_sha256:
            problems.append(f"data sha256: {saved['data_sha256'][:16]}… (run) vs "
                            f"{self.data.data_sha256[:16]}… (now)")
        if problems:
            raise ConfigError(f"cannot resume {self.run_dir}: it was made with another profile "
                              "or other data", problems=problems,
                              hint="resume with the same profile and data, or start a new run")
        path = ckpt.latest_checkpoint(self.run_dir)
        assert path is not None  # checked in _prepare_run_dir
        weights = load_file(str(path / "trainable.safetensors"))
        params = dict(self.peft_model.named_parameters())
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(sharding.shard_like(tensor, params[name]))
        state = load_resume_state(path / "state.pt")
        sharding.load_full_optimizer_state(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        self._set_rng_state(rng[self.world.rank] if self.world.rank < len(rng) else rng[0])
        for key in ("step", "tokens_seen", "train_seconds", "best_eval", "base_eval",
                    "last_eval", "evals_without_gain", "losses"):
            setattr(self, key, state[key])
        self.log(f"resumed from {path} at step {self.step}")

    # --- outputs ------------------------------------------------------------------------------

    def _finish(self) -> RunResult:
        stopped = self.stop_requested and not self.early_stopped
        if stopped:
            if self.checkpointed_step != self.step:
                self.save_checkpoint()
            self.log(f"stopped at step {self.step}: {self.stop_reason}; resume with --resume")
            result = RunResult(self.run_dir, None, self._final_loss(), self.last_eval,
                               self.base_eval, stopped=True, steps=self.step, losses=self.losses)
            return result
        self.final_summary = self.evaluate() if self.data.held_out else {}
        final_eval = self.final_summary.get("loss")
        self.last_eval = final_eval
        if final_eval is not None and (self.best_eval is None or final_eval < self.best_eval):
            self.best_eval = final_eval  # the last evaluation counts too
        adapter_dir = self.run_dir / "adapter"
        # Under FSDP every rank gives its shards; rank 0 alone writes.
        weights = self.trainable_state() if self.strategy == "fsdp" else None
        if self.world.is_main:
            self.save_adapter(adapter_dir, weights)
        result = RunResult(self.run_dir, adapter_dir, self._final_loss(), final_eval,
                           self.base_eval, steps=self.step, losses=self.losses)
        if self.world.is_main:
            self._write_outputs(result)
            self.emit({"event": "done", "run_dir": str(self.run_dir),
                       "adapter_dir": str(adapter_dir), "final_loss": result.final_loss,
                       "eval_loss": final_eval})
        return result

    def _final_loss(self) -> float | None:
        # The last few steps' mean: one step's loss depends on which sequences it drew.
        tail = self.losses[-5:]
        return sum(tail) / len(tail) if tail else None

    def save_adapter(self, directory: Path,
                     weights: dict[str, torch.Tensor] | None = None) -> Path:
        """The adapter in standard PEFT format plus the hypertokenizer that goes with it.

        Args:
            directory: where to write it.
            weights: the whole trainable tensors by name, when this process holds only shards
                (FSDP); None to take them from the model.
        """
        directory.mkdir(parents=True, exist_ok=True)
        # The resized embedding rows that matter travel in the adapter (trainable tokens or
        # modules_to_save); the base rows stay the base model's, so the adapter stays small.
        extra = {} if weights is None else {"state_dict": weights}
        self.peft_model.save_pretrained(directory, save_embedding_layers=False, **extra)
        self.hypertokenizer.save(directory)
        return directory

    def _write_outputs(self, result: RunResult) -> None:
        evals = []
        steps = []
        metrics_path = self.run_dir / "metrics.jsonl"
        for line in metrics_path.read_text().splitlines():
            event = json.loads(line)
            if event.get("event") == "eval" and event.get("eval_loss") is not None:
                evals.append((event["step"], event["eval_loss"]))
            elif event.get("event") == "step":
                steps.append((event["step"], event["loss"]))
        write_loss_png(self.run_dir / "loss.png", steps, evals)
        from engine.training.card import run_card

        card = run_card(self, result, evals)
        self._write_json("run_card.json", card)
        self._write_json(Path("adapter") / "hyperlex_run_card.json", card)

    def _write_json(self, name: str | Path, data: Any) -> None:
        path = self.run_dir / name
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")

    def peak_rss_mb(self) -> float:
        """This process's peak resident memory in MiB."""
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # --- cleanup ------------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Close files and leave the process group."""
        if self.metrics_file is not None:
            self.metrics_file.close()
            self.metrics_file = None
        distributed.shutdown(self.world)


def main(cfg: RunConfig, *, handle_sigterm: bool = False, handle_sigint: bool = False
         ) -> RunResult:
    """Run a whole training: setup, train, cleanup.

    Args:
        cfg: the run's configuration.
        handle_sigterm: on SIGTERM, finish the current step, write a checkpoint and return a
            stopped result (for a process the daemon runs).
        handle_sigint: the same for Ctrl-C (for the command line).
    """
    recipe = LoRARecipe(cfg)
    for wanted, number in ((handle_sigterm, signal.SIGTERM), (handle_sigint, signal.SIGINT)):
        if wanted:
            signal.signal(number, lambda signum, _frame: recipe.request_stop(
                signal.Signals(signum).name))
    try:
        recipe.setup()
        return recipe.train()
    finally:
        recipe.cleanup()
