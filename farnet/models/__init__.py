"""The networks: the backbone adapter, MSFA, FR and FARNet itself (``farnet``), their output type and final
heads (``interface``), the registry of backbones and architectures (``registry``), the one factory
(``factory.build_model``) and the one loader of trained models (``trained``)."""
