"""The stages a sample flows through: caption → score → prompt → generate. Models come in through constructors."""
