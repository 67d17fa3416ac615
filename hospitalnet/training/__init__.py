"""Local training: the masked-BCE objective a site's algorithm steps on, and prediction."""
