"""Overrides that shrink every network to a few units, so tests train in seconds."""

from __future__ import annotations


def tiny_model(units: int = 16, stoch: int = 4, classes: int = 4, horizon: int = 5) -> list[str]:
    """``--set`` overrides for a tiny world model and behaviour (one layer, ``units`` wide).

    No spaces inside a value: the systemd-unit test passes them through word splitting.
    """
    return [
        "device=cpu",
        f"model.rssm.deter={units}", f"model.rssm.hidden={units}",
        f"model.rssm.stoch={stoch}", f"model.rssm.classes={classes}",
        "model.encoder.mlp_layers=1", f"model.encoder.mlp_units={units}",
        "model.encoder.cnn_depth=4",
        "model.decoder.mlp_layers=1", f"model.decoder.mlp_units={units}",
        "model.decoder.cnn_depth=4",
        "model.reward_head.layers=1", f"model.reward_head.units={units}",
        "model.cont_head.layers=1", f"model.cont_head.units={units}",
        f"model.contrastive.proj_units={units}",
        "behavior.actor.layers=1", f"behavior.actor.units={units}",
        "behavior.critic.layers=1", f"behavior.critic.units={units}",
        f"behavior.horizon={horizon}",
        # eager float32, whatever a task file chooses for its learner (a test that compiles
        # or runs bfloat16 says so after these)
        "train.compile=false", "train.precision=float32",
    ]  # fmt: skip
