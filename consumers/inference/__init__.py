"""`eddy serve`: the Open Inference Protocol (KServe v2) over HTTP for every stream."""
