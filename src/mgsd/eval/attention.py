"""Where does the LM look? Attention of the answer position over the image when asked about one object.

A model that answers "where is the red disc?" by retrieval puts its attention on the disc's tokens;
one that pools the picture spreads it evenly. The probe asks ``n`` held-out synthetic scenes where
one object is and, per layer and head, reports the attention mass of the last prompt token on image
tokens, its entropy over them (normalised: 1.0 is uniform) and the share of that image attention on
the tokens whose centre lies in the object's cell, against the share those tokens would get from
uniform attention. It reads attention weights, so it runs the model once with eager attention.
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch

from mgsd.data.scenes import generate_scene, scene_image, scene_question
from mgsd.models.positions import cell_mask
from mgsd.scoring.perception import parse_section


def _where_asks(n: int, seed: int) -> list[tuple[dict[str, Any], str, tuple[int, int]]]:
    rng, asks = random.Random(seed), []
    while len(asks) < n:
        scene = generate_scene(rng)
        for key in range(16):
            kind, prompt, target = scene_question(scene, key)
            if kind == "where":
                asks.append((scene, prompt, parse_section("position", target)))
                break
    return asks


@torch.no_grad()
def object_attention(backbone: Any, n: int = 32, seed: int = 4444) -> dict[str, Any]:
    """Per layer and head: ``image_mass``, ``entropy`` (1 = uniform over image tokens), ``on_object``
    (share of the image attention on the asked object's cell) and ``uniform`` (that share under
    uniform attention), means over ``n`` held-out "where is X" questions."""
    model = backbone.model
    asks = _where_asks(n, seed)
    ctx = backbone.encode_student([a[1] for a in asks], [scene_image(a[0]) for a in asks])
    previous = getattr(model.config, "_attn_implementation", None)
    model.set_attn_implementation("eager")
    try:
        with backbone.eval_mode(), backbone.autocast():
            out = model(
                input_ids=ctx.input_ids,
                attention_mask=ctx.attention_mask,
                **ctx.extras,
                output_attentions=True,
            )
    finally:
        if previous:
            model.set_attn_implementation(previous)
    layers = []
    for att in out.attentions:  # (B, heads, L, L)
        stats = []
        for b, (scene, _, cell) in enumerate(asks):
            image = (ctx.input_ids[b] == backbone.image_token_id).nonzero().squeeze(1)
            w = att[b, :, -1, image].float()  # the last prompt token over the image tokens
            mass = w.sum(-1)
            q = w / mass.clamp_min(1e-12)[:, None]
            entropy = -(q * q.clamp_min(1e-12).log()).sum(-1) / math.log(len(image))
            side = math.isqrt(len(image))  # the scene image is square, so is its token grid
            on = cell_mask(side, side, scene["size"], scene["size"], cell)
            stats.append(
                torch.stack([mass, entropy, q[:, on].sum(-1), torch.full_like(mass, on.float().mean())])
            )
        m = torch.stack(stats).mean(0)
        keys = ("image_mass", "entropy", "on_object", "uniform")
        layers.append([{k: round(float(m[i, h]), 4) for i, k in enumerate(keys)} for h in range(m.shape[1])])
    best = max(
        (h["on_object"] / max(h["uniform"], 1e-9), li, hi)
        for li, hs in enumerate(layers)
        for hi, h in enumerate(hs)
    )
    return {
        "n": n,
        "layers": layers,
        "best_head": {"layer": best[1], "head": best[2], "on_object_over_uniform": best[0]},
    }
