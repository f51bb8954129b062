"""Serving half: BentoML + ONNX Runtime over the exported model packages. Never imports TensorFlow.

Start at service.py (the BentoML services and a request's path through them); settings.py lists
every setting.
"""
