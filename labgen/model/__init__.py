"""The scenario model and the plan made from it: what a lab is, before anything runs."""
