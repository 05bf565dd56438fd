"""Training: the one loop, the fine-tuning and pre-training recipes, their monitoring and run state."""

__all__ = ['finetune', 'monitor', 'pretrain', 'pretrain_model', 'scalars', 'state', 'trainer']
