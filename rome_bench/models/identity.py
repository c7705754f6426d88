"""The model identity: what of a run's model config its model hash covers, beside the weights.

Evaluation files a run's results under ``checkpoint.run_model_hash(content_hash(weights), model_identity(config))``.
The identity must never change for a stored run, so fields added later are left out at their neutral value and
layouts that moved (RoME's ``model.rome`` section, now ``model.options``) are hashed in their old form.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from rome_bench.config import ModelConfig, parse_options
from rome_bench.models.family import build_family
from rome_bench.models.rome import RomeOptions

# Families older runs had; their weights' names already tell them apart, so leaving the family out of the hash
# keeps the model hashes (and stored results) of runs trained before model.family existed.
FAMILIES_BEFORE_FIELD = ("plain", "rome")


def model_identity(config: ModelConfig) -> str:
    """The model config as hashed into the model hash (β schedule, gating, … fix what weights alone do not).

    ``init_from``, a pretrained start and a mixture's ``options.experts`` (the weights training started from) do not
    change the model and are left out: the same weights hash the same wherever they were trained from, and a run
    stays evaluable once a ``--pretrained FILE`` is gone. A null ``pretrained`` stays in (the hashes of runs before).
    """
    fields = dataclasses.asdict(config)
    fields.pop("init_from")
    if fields["pretrained"] is not None:  # like init_from, where training started: the weights are the content
        fields.pop("pretrained")
    fields["options"].pop("experts", None)
    legacy = fields.pop("legacy_identity")
    fields = build_family(config).identity_fields(fields)
    if "rome" in legacy:  # a run of another family stored before model.options: its model.rome, as it was hashed
        fields["rome"] = legacy_rome_section(legacy["rome"])
    if fields["family"] in FAMILIES_BEFORE_FIELD:
        fields.pop("family")
    if not fields.get("options", True):  # no family options: hashed as before model.options existed
        fields.pop("options")
    if fields["normalisation"] == "dataset":  # hashed as before model.normalisation existed
        fields.pop("normalisation")
    return json.dumps(fields, sort_keys=True)


def legacy_rome_section(section: dict[str, Any]) -> dict[str, Any]:
    """A stored ``model.rome`` section with every setting filled in, as the old config parser gave it; ``top_k``
    left out when dense (as before it existed)."""
    return parse_options("model.rome", RomeOptions, section, "model.rome").legacy_section()
