"""Training group: ``detector_model`` → ``detector_evaluation`` (check ``promotion_gate``) → ``champion_model``."""
