"""Frozen foundation models: packaged real LLMs, tiny test models, loading and the soft-prompt backbone.

Submodules are imported explicitly (``puma_lightning.models.loading`` etc.) so that importing this
package stays cheap.
"""
