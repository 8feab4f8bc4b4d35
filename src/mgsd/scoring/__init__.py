"""Scoring below train and eval: plans (success, optimal, progress, invalid), perception answers,
and their aggregates with confidence intervals. The training reward and the evaluation use the same
definitions. Import from the submodules (``plans``, ``perception``, ``aggregate``).
"""
