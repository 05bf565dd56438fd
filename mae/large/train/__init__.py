"""Training recipes: fine-tuning and its run state."""

__all__ = ['finetune', 'state', 'trainer']
