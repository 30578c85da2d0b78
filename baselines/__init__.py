"""The comparison networks of Table 2: U-Net and FPN (built through farnet.models.factory.build_model)."""
