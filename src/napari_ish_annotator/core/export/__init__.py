"""Exports of trained models to other ecosystems (bioimage.io: :mod:`.bioimageio`)."""
