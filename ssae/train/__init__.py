"""Trainers for the three SSAE components (`ssae train smpn|sae|rb`)."""
