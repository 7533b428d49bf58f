"""Workshop exercises: scenarios with an exercise: block (labgen workshop up NAME)."""
