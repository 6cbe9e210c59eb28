"""The course's experiments: training runs too long for a lesson, run once as a script whose results file the
lesson reads. The capstone's (lesson 09) each test one of the claims the course makes about MoE, on the course's own
model and corpus. One concept per module:

- ``scaling``         equal compute, equal parameters: a dense baseline, a FLOP-matched MoE, a parameter-matched
                      dense model, trained on the same tokens over several seeds
- ``specialization``  what the experts learn: mutual information between the chosen expert and a labelling of the
                      tokens (character class, kind of text), against a shuffled-label baseline
- ``precision``       how many tokens change their experts when the router runs in bfloat16 instead of float32
- ``finetune``        fine-tuning friction: a narrow slice of the data, the loss on it and elsewhere, the load
- ``bill``            what MoE costs: resident parameters, FLOPs per token, bytes per token under expert parallelism
- ``results``         the results files in ``data/results/``: written with the commit, the machine, seeds, settings
- ``pool``            independent training runs, several at once
- ``balancing``       lessons 03 and 04: the tiny model trained with each balancing method and with expert choice
- ``serving_model``   lesson 08: the 4-layer tiny model its serving experiments start from

``python -m moe_course.experiments capstone`` runs the capstone's and writes ``data/results/capstone.json``; the
other experiments are named the same way (``balancing``, ``serving_model``).
"""
