"""Model selection and data-need prediction from the eNTK: shared predictors (`predictors`) and statistics
(`stats`); the `ntkft select` command builds on them."""
