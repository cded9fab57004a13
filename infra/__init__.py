"""CDK constructs and the stack: one construct per concern (publisher, scaling)."""
