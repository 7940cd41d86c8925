"""The MLflow store: what it holds (``schema``), the one writer (``writer.Tracker``) and the
paged reader (``reader.StoreReader``)."""
