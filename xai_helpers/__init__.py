"""Helpers shared by the XAI-for-medical-imaging workbook notebooks.

Importing the package has no side effects: no seeding, no plotting style, no downloads.
Import the submodule you need: ``from xai_helpers import data, models, training, explain``.
"""

__version__ = "0.1.0"
