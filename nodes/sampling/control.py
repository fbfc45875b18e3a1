"""What the prompt adds to every row of a model call, kept to the output rows: ControlNet and
T2I-adapter residuals, and the embedded guidance value (Flux-dev's) where the sampler's prompt
gives another one than the inversions were made with.

ComfyUI computes a control's residuals for every row of a model call and the model adds them
row by row (h += residual). In the Cross-Image Sampler's batch that would pull the appearance
and structure latents off their inversions too, so their rows' residuals are zeroed before the
model adds them; each row's control is computed from that row alone, so the output rows get
exactly the residuals they would get in a call of their own. Likewise the appearance and
structure rows get the guidance their inversions were made with, the output rows the prompt's."""
import torch


def on_outputs(rows, wrapped=None, guidance=None):
    """A model_function_wrapper (chaining `wrapped`, one set before it) for a call with these
    CallRows: the control residuals of the output rows (and their plain copies) only; with
    `guidance` (a number), that embedded guidance on the other rows."""
    def wrapper(apply_model, args):
        c = args["c"]
        keep = rows.output_rows(len(args["cond_or_uncond"])).to(args["input"].device)
        if c.get("control") is not None:
            c = {**c, "control": {name: [None if residual is None else residual * _rows(keep, residual)
                                         for residual in residuals]  # new lists: the model pops them
                                  for name, residuals in c["control"].items()}}
        if guidance is not None and c.get("guidance") is not None:
            c = {**c, "guidance": torch.where(keep.to(torch.bool), c["guidance"], torch.full_like(c["guidance"],
                                                                                                   guidance))}
        args = {**args, "c": c}
        if wrapped is not None:
            return wrapped(apply_model, args)
        return apply_model(args["input"], args["timestep"], **c)
    return wrapper


def _rows(keep: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    if residual.shape[0] != keep.shape[0]:
        raise ValueError(f"positive: a control gave {residual.shape[0]} rows of residuals for a batch of "
                         f"{keep.shape[0]}; the Cross-Image Sampler cannot keep them to the output")
    return keep.to(residual.dtype).view(-1, *[1] * (residual.ndim - 1))
