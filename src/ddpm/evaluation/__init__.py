"""Measuring a run: bits/dim, classifier FD/KID, Inception FID, the noise study."""
