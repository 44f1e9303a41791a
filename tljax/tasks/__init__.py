"""Tasks on the training engine: what is trained (the loss) and how it is evaluated.

``lm``: masked LM (BERT) and causal LM (GPT) on packed token ids. ``classify``: sequence classification
(fine-tuning) on labeled text.
``contrastive``: SetFit-style pair tuning. ``prompt``: a causal LM's label scores by prompting (no
training). A new objective is a new module here with a loss for ``tljax.engine``.
"""
