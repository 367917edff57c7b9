"""The parts of ``recipes/train.py``: config, launch checks, data, model, callbacks, and the end of a run.

Kept beside the script (not in the ``memsinks`` package) because it is recipe code: it decides
files, defaults and messages for one training script. It uses ``memsinks``' public API and the
experiment parts the demo and the benchmarks share (the memorization corpus, model loading, the
Trainer set-up: ``memsinks._memorization_corpus``, ``_causal_lm``, ``_trainer_setup``).

- ``config``: the YAML sections as dataclasses, the validated ``Recipe``, the checks across sections;
- ``arguments``: the YAML file and ``--section.key value`` overrides read with ``HfArgumentParser``, unknown
  keys named with the nearest valid one, ``--help-config``;
- ``launch``: what ``accelerate launch`` / ``torchrun`` started, and which settings it cannot run;
- ``data``: the pretraining and fine-tuning data, prepared once on rank 0 and saved for every rank and ``--resume``;
- ``model``: the model from a config or ``from_pretrained``, LoRA, sinks (whole weights also under ZeRO-3);
- ``callbacks``: routing audit across ranks, throughput, launch record, ZeRO-3 checkpoint layout;
- ``finish``: the final model with sinks, the export without sinks and the ablation report.
"""
