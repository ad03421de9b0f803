"""The bundled demo: a small CNN (``net``) and the synthetic scenes it is trained on (``scenes``)."""
