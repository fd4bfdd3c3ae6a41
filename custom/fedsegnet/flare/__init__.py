"""FLARE adapters: the only package of FedSegNet that imports nvflare.

Each adapter subclasses FLARE's own base and only translates Shareable/DXO/FLContext to and from
the plain functions of ``fedsegnet.data``, ``fedsegnet.training`` and friends.
"""
