"""Training recipes: fine-tuning and its run state."""

__all__ = ['finetune', 'loop', 'state']
