"""The result of inverting a latent: its whole noising trajectory, in sampling order."""
from dataclasses import dataclass, field
import math
from typing import Optional

import torch


@dataclass(frozen=True, eq=False)
class Inversion:
    """An inverted latent batch.

    sigmas:     (n + 1,) the sampling schedule, descending; sigmas[-1] is the clean end.
    trajectory: (n + 1, B, C, H, W) trajectory[i] is the latent at sigmas[i], in the
                model's own latent space (after ComfyUI's process_latent_in);
                trajectory[-1] is the inverted (clean) latent, trajectory[0] the noisiest.
    model_key:  identifies the model that made it (its kind and weights); sampling checks it.
    method:     "ddim" (deterministic: the Euler step run backwards, on any model), "ddpm"
                (edit-friendly DDPM, core/edit_friendly.py) or "flow" (its analogue on a flow, core/edit_friendly.py).
    noise:      (n, B, C, H, W) for "ddpm" and "flow": noise[i] is the noise map of the step
                from sigmas[i] to sigmas[i + 1]; None for "ddim".
    guidance:   the guidance value the prompt carried into the model (Flux-dev's embedded
                guidance), which the latents' rows need to retrace it; None for other models.
    pending:    for an edit-friendly inversion whose model calls have not run yet (Invert Pair
                leaves them to the sampler, which may make them in its own calls:
                nodes/sampling/deferred.py),
                what runs them: pending.resolve() gives the complete Inversion, pending.guidance()
                its guidance, pending.job the inversions made in the same calls. The trajectory
                then holds the independent draws (core/edit_friendly.draws: the clean latent
                last), noise and guidance are None. Read noise and guidance from resolved().
    """

    sigmas: torch.Tensor
    trajectory: torch.Tensor
    model_key: str
    method: str = "ddim"
    noise: Optional[torch.Tensor] = None
    guidance: Optional[float] = None
    pending: Optional[object] = field(default=None, repr=False)

    METHODS = ("ddim", "ddpm", "flow")
    STOCHASTIC = ("ddpm", "flow")

    def __post_init__(self):
        """Refuse what would sample to garbage (files can hold anything): errors say "inversion"."""
        if self.method not in self.METHODS:
            raise ValueError(f"inversion: unknown method {self.method!r} (known: {', '.join(self.METHODS)})")
        for label, t in (("sigmas", self.sigmas), ("trajectory", self.trajectory), ("noise", self.noise)):
            if t is not None and (not isinstance(t, torch.Tensor) or t.dtype != torch.float32):
                raise ValueError(f"inversion: {label} must be a float32 tensor, got "
                                 f"{getattr(t, 'dtype', type(t).__name__)}")
            if t is not None and not bool(torch.isfinite(t).all()):
                raise ValueError(f"inversion: {label} holds NaN or infinite values")
        frames = self.trajectory.ndim == 6 and self.trajectory.shape[3] == 1  # (.., channels, 1 frame, height, width)
        if self.sigmas.ndim != 1 or not (self.trajectory.ndim == 5 or frames):
            raise ValueError("inversion: sigmas must be 1-D and the trajectory (steps, batch, channels, height, "
                             f"width), got {tuple(self.sigmas.shape)} and {tuple(self.trajectory.shape)}")
        if self.sigmas.shape[0] < 2 or bool((self.sigmas[:-1] <= self.sigmas[1:]).any()) or float(self.sigmas[-1]) < 0:
            raise ValueError("inversion: sigmas must be a schedule of at least one step, falling to 0 or above")
        if self.trajectory.shape[0] != self.sigmas.shape[0]:
            raise ValueError(
                f"inversion: {self.trajectory.shape[0]} latents for {self.sigmas.shape[0]} sigmas")
        if (self.noise is not None or self.pending is not None) != (self.method in self.STOCHASTIC) or \
                (self.noise is not None and self.pending is not None):
            raise ValueError("inversion: edit-friendly inversions carry noise maps, DDIM inversions none")
        if self.guidance is not None and not math.isfinite(self.guidance):
            raise ValueError(f"inversion: guidance must be a number, got {self.guidance!r}")
        if self.noise is not None and self.noise.shape != (self.steps,) + tuple(self.trajectory.shape[1:]):
            raise ValueError(f"inversion: noise maps of shape {tuple(self.noise.shape)} do not fit the trajectory")

    def __deepcopy__(self, memo):
        # Immutable: ComfyUI deep-copies model options on every clone; share, don't copy.
        return self

    def resolved(self) -> "Inversion":
        """The complete inversion: this one, or a pending one's once its model calls have run."""
        return self if self.pending is None else self.pending.resolve()

    def shares_calls_with(self, other: "Inversion") -> bool:
        """Whether both wait on the same model calls (one Invert Pair: one prompt and guidance)."""
        return self.pending is not None and other.pending is not None and self.pending.job is other.pending.job

    def known_guidance(self) -> Optional[float]:
        """The guidance its model calls got (a pending inversion's runs them if none has run yet)."""
        return self.guidance if self.pending is None else self.pending.guidance()

    @property
    def steps(self) -> int:
        return self.sigmas.shape[0] - 1

    @property
    def batch_size(self) -> int:
        return self.trajectory.shape[1]

    @property
    def noisy(self) -> torch.Tensor:
        """The latent sampling starts from (at sigmas[0])."""
        return self.trajectory[0]

    @property
    def clean(self) -> torch.Tensor:
        return self.trajectory[-1]

    FILE_FORMAT = "cross_image_attention.inversion"
    FILE_VERSION = "1"

    def to_tensors(self):
        """(tensors, metadata) for a safetensors file: no code, only arrays and strings."""
        if self.pending is not None:
            return self.resolved().to_tensors()
        tensors = {"sigmas": self.sigmas.contiguous(), "trajectory": self.trajectory.contiguous()}
        if self.noise is not None:
            tensors["noise"] = self.noise.contiguous()
        metadata = {"format": self.FILE_FORMAT, "version": self.FILE_VERSION,
                    "model_key": self.model_key, "method": self.method}
        if self.guidance is not None:
            metadata["guidance"] = repr(float(self.guidance))
        return tensors, metadata

    @classmethod
    def from_tensors(cls, tensors: dict, metadata: dict, name: str = "inversion") -> "Inversion":
        """Rebuild from to_tensors() output; errors name the input `name`."""
        metadata = metadata or {}
        if metadata.get("format") != cls.FILE_FORMAT:
            raise ValueError(f"{name}: not a saved inversion (no '{cls.FILE_FORMAT}' metadata)")
        if metadata.get("version") != cls.FILE_VERSION:
            raise ValueError(f"{name}: saved inversion version {metadata.get('version')} is not supported "
                             f"(this pack reads version {cls.FILE_VERSION})")
        missing = sorted({"sigmas", "trajectory"} - set(tensors))
        missing += ["model_key"] if "model_key" not in metadata else []
        if missing:
            raise ValueError(f"{name}: saved inversion lacks {missing}")
        try:
            guidance = metadata.get("guidance")
            return cls(sigmas=tensors["sigmas"], trajectory=tensors["trajectory"], model_key=metadata["model_key"],
                       method=metadata.get("method", "ddim"), noise=tensors.get("noise"),
                       guidance=None if guidance is None else float(guidance))
        except ValueError as error:  # "inversion: ..." -> the input's name and the file's
            raise ValueError(f"{name}: {str(error).split(': ', 1)[-1]}") from None

    def check_pairs_with(self, other: "Inversion", name: str, other_name: str) -> None:
        """Raise a ValueError naming both inputs unless the two can be sampled together."""
        if self.model_key != other.model_key:
            raise ValueError(f"{name} and {other_name} were inverted with different models")
        if self.method != other.method:
            raise ValueError(f"{name} was inverted with {self.method.upper()} but {other_name} with "
                             f"{other.method.upper()}: use the same Invert node for both")
        if not self.shares_calls_with(other) and self.known_guidance() != other.known_guidance():
            raise ValueError(f"{name} was inverted with guidance {self.known_guidance()} but {other_name} with "
                             f"{other.known_guidance()}: invert both with one prompt (FluxGuidance)")
        if self.trajectory.shape[2] != other.trajectory.shape[2]:  # sizes may differ, channels not
            raise ValueError(f"{name} latent has {self.trajectory.shape[2]} channels but {other_name} latent "
                             f"{other.trajectory.shape[2]}: use latents of the same VAE")
        if self.sigmas.shape != other.sigmas.shape or not torch.allclose(self.sigmas, other.sigmas):
            raise ValueError(
                f"{name} and {other_name} were inverted with different schedules "
                f"({self.steps} vs {other.steps} steps or another scheduler): use the same steps and scheduler")
        if other.batch_size not in (1, self.batch_size):
            raise ValueError(
                f"{other_name} batch of {other.batch_size} does not fit {name} batch of "
                f"{self.batch_size}: use one {other_name} image or one per {name} image")
