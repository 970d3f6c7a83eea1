"""Training: one recipe (recipe.prepare, then recipe.fit) for sft, pt and every rlhf algorithm."""
