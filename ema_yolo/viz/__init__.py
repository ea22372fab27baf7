"""Pictures of what a detector attends to: attention layers' own spatial weights and class-activation maps."""
