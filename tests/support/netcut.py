"""A TCP proxy a test can cut and heal: takes a server (PostgreSQL, Redis) away from the gateway
without touching the shared server itself."""

from __future__ import annotations

import asyncio
import threading

from tests.support.gateway import free_socket


class CuttableProxy:
    """A TCP proxy to PostgreSQL that the test can cut (every connection closed, new ones refused)
    and heal, to take the database away from the gateway without touching the shared server."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._sock = free_socket()
        self.port: int = self._sock.getsockname()[1]
        self.cut = False
        self._conns: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(self._handle, sock=self._sock))
        loop.run_forever()
        server.close()
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.gather(*asyncio.all_tasks(loop), return_exceptions=True))
        loop.run_until_complete(server.wait_closed())
        loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        if self.cut:  # cut while connecting
            writer.close()
            up_writer.close()
            return
        self._conns.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._conns.discard(writer)
        self._conns.discard(up_writer)

    def start(self) -> None:
        self._thread.start()

    def set_cut(self, cut: bool) -> None:
        """Cuts or heals, and returns once the proxy's loop has done it (no guessed pause)."""

        async def apply() -> None:
            self.cut = cut
            if cut:
                for w in list(self._conns):
                    w.transport.abort()
                self._conns.clear()

        if not self._thread.is_alive():
            self.cut = cut
            return
        asyncio.run_coroutine_threadsafe(apply(), self._loop).result(10)

    def stop(self) -> None:
        self.set_cut(True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
