"""Stuff pseudo-labels from a pretrained panoptic model, in three parts: ``mapping`` (model labels -> our
stuff classes), ``cache`` (one cached map per picture) and ``labeller`` (the model run, sharded over
processes). ``dataset_scripts/stuff_model.py`` is their command line."""
