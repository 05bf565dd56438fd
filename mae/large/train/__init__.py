"""Training recipes: fine-tuning and pre-training, and the loop and run state they share."""

__all__ = ['finetune', 'monitor', 'pretrain', 'pretrain_model', 'scalars', 'state', 'trainer']
