"""The parts of ``recipes/train.py``: config, launch checks, data, model, callbacks, and the end of a run.

Kept beside the script (not in the ``memsinks`` package) because it is recipe code: it decides
files, defaults and messages for one training script, and uses only ``memsinks``' public API.

- ``config``: the YAML sections as dataclasses, CLI overrides, unknown keys named with the nearest valid one;
- ``launch``: what ``accelerate launch`` / ``torchrun`` started, and which settings it cannot run;
- ``data``: the pretraining and fine-tuning data, prepared once on rank 0 and saved for every rank and ``--resume``;
- ``model``: the model from a config or ``from_pretrained``, LoRA, sinks (whole weights also under ZeRO-3);
- ``callbacks``: routing audit across ranks, throughput, launch record, ZeRO-3 checkpoint layout;
- ``finish``: the final model with sinks, the export without sinks and the ablation report.
"""
