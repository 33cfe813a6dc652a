"""Flower's federated round over loopback gRPC, timed here.

PERF.md states issue 5's device-cycle goals against Flower 1.6 running one
round with 8 or 32 clients and LeNet-size updates (61,706 float32) over
loopback gRPC, measured on another machine. PERF.md also says every system
figure is judged against its peer measured on the same machine in the same
run; this script is that peer, so scripts/cycle-peers.sh can put it beside
fedcluster's BenchmarkDeviceCycle.

Flower is not packaged for Debian and pip is not reachable, so this is
Flower 1.6's round written down, on Debian bookworm's python3-grpcio 1.51,
python3-protobuf and python3-numpy 1.24 (PERF.md's versions):

- the transport: one bidirectional `flwr.proto.FlowerService/Join` stream
  per client, ServerMessage.fit_ins / ClientMessage.fit_res messages whose
  Parameters carry one `np.save` blob per tensor, the server and channel
  options of Flower's grpc_server and connection (512 MiB messages, 1,000
  workers);
- the server: per client a bridge (a condition variable with Flower's four
  states), the Join generator that yields the bridge's instruction and then
  waits for the client's answer through a reader thread and queue (Flower's
  TimeoutIterator), and per round a fresh ThreadPoolExecutor running every
  client's fit (serialize FitIns, bridge request, deserialize FitRes), then
  FedAvg's aggregate_fit (np.load of every tensor, Flower's weighted
  `reduce(np.add)` average) and the new parameters' `np.save`;
- the client: one process per client, as `flwr.client.start_numpy_client`
  runs them, receiving from the stream, decoding the parameters, returning
  them from a NumPyClient.fit that does not train, encoding and queueing
  the answer.

It leaves out what Flower 1.6 does besides (the evaluate round that FedAvg's
default fraction_evaluate=1.0 adds to every round, the TaskIns/TaskRes
wrapping of every message on the client, config and metrics maps, logging,
history), so Flower's own round takes at least as long as this one: a
fedcluster ratio against it is a lower bound of the ratio against Flower.

Usage: flower_round.py <clients> <seconds> [warm-up rounds]
Output: "peer flower_round clients=N rounds=R round_ms_p50=… updates_per_s=…"
"""

import concurrent.futures
import io
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from functools import reduce

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

MAX_MESSAGE = 536_870_912  # Flower's GRPC_MAX_MESSAGE_LENGTH
WORKERS = 1000  # Flower's max_concurrent_workers default
SERVICE = "flwr.proto.FlowerService"
JOIN = "/" + SERVICE + "/Join"

# MindSpore's LeNet-5 (the model fedcluster's benchmark serves): 61,706 floats.
LENET = [(6, 1, 5, 5), (16, 6, 5, 5), (120, 400), (120,), (84, 120), (84,), (10, 84), (10,)]


def _messages():
    """Flower's transport.proto messages that a fit round uses."""
    f = descriptor_pb2.FileDescriptorProto(name="flower_round.proto", package="flwr.proto", syntax="proto3")
    T = descriptor_pb2.FieldDescriptorProto

    def message(name, *fields, oneof=None):
        m = f.message_type.add(name=name)
        if oneof:
            m.oneof_decl.add(name=oneof)
        for number, fname, ftype, label, type_name in fields:
            fd = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                fd.type_name = ".flwr.proto." + type_name
            if oneof:
                fd.oneof_index = 0
        return m

    opt, rep = T.LABEL_OPTIONAL, T.LABEL_REPEATED
    message("Status", (1, "code", T.TYPE_INT32, opt, None), (2, "message", T.TYPE_STRING, opt, None))
    message("Parameters", (1, "tensors", T.TYPE_BYTES, rep, None), (2, "tensor_type", T.TYPE_STRING, opt, None))
    message("FitIns", (1, "parameters", T.TYPE_MESSAGE, opt, "Parameters"))
    message("FitRes", (1, "status", T.TYPE_MESSAGE, opt, "Status"), (2, "parameters", T.TYPE_MESSAGE, opt, "Parameters"),
            (3, "num_examples", T.TYPE_INT64, opt, None))
    message("ServerMessage", (3, "fit_ins", T.TYPE_MESSAGE, opt, "FitIns"), oneof="msg")
    message("ClientMessage", (3, "fit_res", T.TYPE_MESSAGE, opt, "FitRes"), oneof="msg")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    # Newer protobuf has GetMessageClass and no GetPrototype; Debian's 4.21 the reverse.
    cls = getattr(message_factory, "GetMessageClass", None) or message_factory.MessageFactory(pool).GetPrototype
    return {n: cls(pool.FindMessageTypeByName("flwr.proto." + n))
            for n in ("Status", "Parameters", "FitIns", "FitRes", "ServerMessage", "ClientMessage")}


PB = _messages()


# flwr.common.parameter
def ndarray_to_bytes(a):
    b = io.BytesIO()
    np.save(b, a, allow_pickle=False)
    return b.getvalue()


def bytes_to_ndarray(t):
    return np.load(io.BytesIO(t), allow_pickle=False)


def ndarrays_to_parameters(arrays):
    return [ndarray_to_bytes(a) for a in arrays]


def parameters_to_ndarrays(tensors):
    return [bytes_to_ndarray(t) for t in tensors]


# flwr.common.serde: Parameters are plain Python lists of bytes between
# the proto messages, as flwr.common.Parameters is.
def fit_ins_to_proto(tensors):
    return PB["FitIns"](parameters=PB["Parameters"](tensors=tensors, tensor_type="numpy.ndarray"))


def fit_res_from_proto(msg):
    return list(msg.parameters.tensors), msg.num_examples


class Bridge:
    """flwr.server.fleet.grpc_bidi.grpc_bridge.GrpcBridge's states."""

    AWAITING_INS, INS_AVAILABLE, AWAITING_RES, RES_AVAILABLE, CLOSED = range(5)

    def __init__(self):
        self.cv = threading.Condition()
        self.status = self.AWAITING_INS
        self.ins = self.res = None

    def close(self):
        with self.cv:
            self.status = self.CLOSED
            self.cv.notify_all()

    def request(self, ins):
        with self.cv:
            self.ins, self.status = ins, self.INS_AVAILABLE
            self.cv.notify_all()
        with self.cv:
            self.cv.wait_for(lambda: self.status in (self.CLOSED, self.RES_AVAILABLE))
            if self.status == self.CLOSED:
                raise RuntimeError("bridge closed")
            res, self.res, self.status = self.res, None, self.AWAITING_INS
            self.cv.notify_all()
        return res

    def ins_iterator(self):
        while self.status != self.CLOSED:
            with self.cv:
                self.cv.wait_for(lambda: self.status in (self.CLOSED, self.INS_AVAILABLE))
                if self.status == self.CLOSED:
                    return
                ins, self.ins, self.status = self.ins, None, self.AWAITING_RES
                self.cv.notify_all()
            yield ins

    def set_res(self, res):
        with self.cv:
            self.res, self.status = res, self.RES_AVAILABLE
            self.cv.notify_all()


class ReaderIterator:
    """The iterators package's TimeoutIterator without a timeout (Flower's
    fit passes none): a thread reads the request stream into a queue."""

    _done = object()

    def __init__(self, it):
        self.q = queue.Queue()
        threading.Thread(target=self._read, args=(it,), daemon=True).start()

    def _read(self, it):
        try:
            for x in it:
                self.q.put(x)
        except grpc.RpcError:
            pass  # the stream ended with the run
        finally:
            self.q.put(self._done)

    def __next__(self):
        x = self.q.get()
        if x is self._done:
            raise StopIteration
        return x


class Servicer:
    def __init__(self):
        self.cv = threading.Condition()
        self.bridges = []

    def Join(self, request_iterator, context):
        bridge = Bridge()
        with self.cv:
            self.bridges.append(bridge)
            self.cv.notify_all()
        context.add_callback(bridge.close)
        answers = ReaderIterator(request_iterator)
        for ins in bridge.ins_iterator():
            yield ins
            try:
                bridge.set_res(next(answers))
            except StopIteration:
                return

    def wait(self, n):
        with self.cv:
            self.cv.wait_for(lambda: len(self.bridges) >= n)
            return list(self.bridges)


def fit_client(bridge, tensors):
    res = bridge.request(PB["ServerMessage"](fit_ins=fit_ins_to_proto(tensors)))
    return fit_res_from_proto(res.fit_res)


def aggregate(results):
    """flwr.server.strategy.aggregate.aggregate."""
    total = sum(n for _, n in results)
    weighted = [[layer * n for layer in weights] for weights, n in results]
    return [reduce(np.add, layers) / total for layers in zip(*weighted)]


def fit_round(bridges, tensors):
    with concurrent.futures.ThreadPoolExecutor() as ex:
        fs = {ex.submit(fit_client, b, tensors) for b in bridges}
        done, _ = concurrent.futures.wait(fs)
    results = [(parameters_to_ndarrays(t), n) for t, n in (f.result() for f in done)]
    return ndarrays_to_parameters(aggregate(results))


def client(address):
    channel = grpc.insecure_channel(address, options=[
        ("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)])
    join = channel.stream_stream(JOIN, request_serializer=PB["ClientMessage"].SerializeToString,
                                 response_deserializer=PB["ServerMessage"].FromString)
    q = queue.Queue()
    try:
        for msg in join(iter(q.get, None)):
            tensors = list(msg.fit_ins.parameters.tensors)  # serde.fit_ins_from_proto
            weights = parameters_to_ndarrays(tensors)  # NumPyClient: no training
            res = PB["FitRes"](status=PB["Status"](code=0, message="Success"),
                               parameters=PB["Parameters"](tensors=ndarrays_to_parameters(weights), tensor_type="numpy.ndarray"),
                               num_examples=32)
            q.put(PB["ClientMessage"](fit_res=res), block=False)
    except grpc.RpcError:
        pass  # the server went away: the run is over


def main():
    clients, seconds = int(sys.argv[1]), float(sys.argv[2])
    warmup = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS), maximum_concurrent_rpcs=WORKERS,
                         options=[("grpc.max_concurrent_streams", max(100, WORKERS)),
                                  ("grpc.max_send_message_length", MAX_MESSAGE),
                                  ("grpc.max_receive_message_length", MAX_MESSAGE)])
    servicer = Servicer()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Join": grpc.stream_stream_rpc_method_handler(servicer.Join, request_deserializer=PB["ClientMessage"].FromString,
                                                      response_serializer=PB["ServerMessage"].SerializeToString)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--client", f"127.0.0.1:{port}"])
             for _ in range(clients)]
    try:
        bridges = servicer.wait(clients)
        rng = np.random.default_rng(1)
        tensors = ndarrays_to_parameters([rng.standard_normal(s, dtype=np.float32) for s in LENET])
        for _ in range(warmup):
            tensors = fit_round(bridges, tensors)
        times = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            tensors = fit_round(bridges, tensors)
            times.append(time.perf_counter() - t0)
        total = time.perf_counter() - start
        check = parameters_to_ndarrays(tensors)
        assert [a.shape for a in check] == LENET and all(np.isfinite(a).all() for a in check)
        print(f"peer flower_round clients={clients} rounds={len(times)} "
              f"round_ms_p50={statistics.median(times) * 1e3:.2f} updates_per_s={clients * len(times) / total:.1f}")
    finally:
        server.stop(None)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--client":
        client(sys.argv[2])
    else:
        main()
