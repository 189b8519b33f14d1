"""Production monitoring: drift between the training snapshot and live feedback."""
