"""The bundled demo: a small CNN (``net``) and the synthetic scenes it learns from (``scenes``)."""
