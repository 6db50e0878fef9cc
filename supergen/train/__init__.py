"""Training the embedded world model (`python -m supergen.train`, `infra/train_world.sh`).

Not imported by rendering: a render loads the trained folder through `from_pretrained` like any model.
"""
