"""The capstone's experiments (lesson 09): each tests one of the claims the course makes about MoE, on the course's
own model and corpus. One concept per module:

- ``scaling``         equal compute, equal parameters: a dense baseline, a FLOP-matched MoE, a parameter-matched
                      dense model, trained on the same tokens over several seeds
- ``specialization``  what the experts learn: mutual information between the chosen expert and a labelling of the
                      tokens (character class, kind of text), against a shuffled-label baseline
- ``precision``       how many tokens change their experts when the router runs in bfloat16 instead of float32
- ``finetune``        fine-tuning friction: a narrow slice of the data, the loss on it and elsewhere, the load
- ``bill``            what MoE costs: resident parameters, FLOPs per token, bytes per token under expert parallelism
- ``results``         the results files in ``data/results/``: written with the commit, seeds and settings

``python -m moe_course.experiments capstone`` runs them all and writes ``data/results/capstone.json``.
"""
