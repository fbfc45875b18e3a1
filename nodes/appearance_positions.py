"""Appearance Positions: where the appearance's keys sit on models with rotary positions (Flux,
Chroma; core/positions.py), for Cross-Image Attention."""
from ..core.positions import POSITIONS
from ..core.settings import PositionSettings
from .inputs import numbers
from .sockets import ADVANCED, CATEGORY, PositionsSocket, io


class CrossImageAppearancePositions(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CrossImageAppearancePositions",
            display_name="Appearance Positions",
            category=CATEGORY,
            description=("On models with rotary position embeddings (Flux, Chroma), keys at the output's own "
                         "positions dominate its attention, so the output copies the appearance image's layout. "
                         "Choose where the appearance's keys sit: attenuated (their fine position bands weakened, "
                         "most in early steps), same (Stable Flow) or shifted (beside the output). Connect to "
                         "Cross-Image Attention's positions."),
            inputs=[
                io.Combo.Input("positions", options=list(POSITIONS), default="attenuated",
                               tooltip="attenuated: the appearance keys' high-frequency position bands scaled down, "
                                       "most at the first step (Untwisting RoPE, 2026): the output matches by "
                                       "content and keeps its own layout. same: the positions they were embedded at "
                                       "(Stable Flow): each output pixel favours the same place in the appearance. "
                                       "shifted: beside the output, no position shared."),
                io.Float.Input("high_start", default=0.0, min=0.0, max=2.0, step=0.05, **ADVANCED,
                               tooltip="attenuated: the scale of the highest-frequency band at the first step (0: "
                                       "removed; lower bands scaled less, the lowest not at all)."),
                io.Float.Input("high_end", default=1.0, min=0.0, max=2.0, step=0.05, **ADVANCED,
                               tooltip="attenuated: that scale at the last step (1: the positions as embedded)."),
            ],
            outputs=[PositionsSocket.Output(display_name="positions",
                                            tooltip="Position settings; connect to Cross-Image Attention.")],
        )

    @classmethod
    def execute(cls, positions, high_start=0.0, high_end=1.0):
        if positions not in POSITIONS:
            raise ValueError(f"positions: one of {', '.join(POSITIONS)}, got {positions!r}")
        return io.NodeOutput(PositionSettings(positions, *numbers(cls, high_start=high_start, high_end=high_end)))
