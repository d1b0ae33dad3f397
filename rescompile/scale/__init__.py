"""Scale-out on Ray: sharded calibration and validation, sweeps of builds (optional extra ``[ray]``)."""
