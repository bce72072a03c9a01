"""Import a training config users already run (axolotl, LLaMA-Factory, TRL, transformers, PEFT, bitsandbytes).

`import_recipe([RecipeFile(name=..., text=...), ...])` returns a `RecipeImport`: the model id, the plan fields
the files set, the validated `TrainingPlan`, and per field what was honoured, not modelled, ignored or unknown.
Pure: it parses the texts given (JSON or YAML) and imports neither torch nor any web framework.
"""

from app.recipes.formats import FORMATS
from app.recipes.importer import import_recipe
from app.recipes.result import (
    FileField,
    FileFormat,
    MappedField,
    NotModelledField,
    RecipeFile,
    RecipeImport,
)

__all__ = [
    "FORMATS",
    "FileField",
    "FileFormat",
    "MappedField",
    "NotModelledField",
    "RecipeFile",
    "RecipeImport",
    "import_recipe",
]
