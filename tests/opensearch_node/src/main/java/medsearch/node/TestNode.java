package medsearch.node;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;

import org.codelibs.opensearch.runner.OpenSearchRunner;
import org.opensearch.http.HttpServerTransport;

/**
 * One OpenSearch node on 127.0.0.1 for the test suite, with k-NN and neural-search.
 *
 * <p>Usage: {@code TestNode <home folder> <port file>}. The HTTP port is chosen by the system
 * (port 0) and written to the port file once the cluster is yellow, so the caller never races
 * another process for a port. The node lives as long as its standard input is open: when the
 * parent process ends, however it ends, the pipe closes and the node stops and deletes its home
 * folder, so no process or data is left behind.
 */
public final class TestNode {

    private static final String PLUGINS =
            "org.opensearch.knn.plugin.KNNPlugin,org.opensearch.neuralsearch.plugin.NeuralSearch";

    private TestNode() {}

    public static void main(final String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: TestNode <home folder> <port file>");
            System.exit(2);
        }
        final Path home = Paths.get(args[0]).toAbsolutePath();
        final Path portFile = Paths.get(args[1]).toAbsolutePath();
        final OpenSearchRunner runner = new OpenSearchRunner();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> stop(runner)));
        runner.onBuild((number, settings) -> {
            settings.put("network.host", "127.0.0.1");
            settings.put("http.port", "0");
            settings.put("transport.port", "0");
            // A test node on a shared disk: never refuse writes because the disk looks full.
            settings.put("cluster.routing.allocation.disk.threshold_enabled", false);
            settings.put("indices.breaker.total.use_real_memory", false);
            settings.put("action.auto_create_index", false);
        });
        runner.build(OpenSearchRunner.newConfigs()
                .basePath(home.toString())
                .clusterName("medsearch-test")
                .numOfNode(1)
                .pluginTypes(PLUGINS));
        runner.ensureYellow();
        final int port = runner.node().injector().getInstance(HttpServerTransport.class)
                .boundAddress().publishAddress().getPort();
        final Path partial = portFile.resolveSibling(portFile.getFileName() + ".partial");
        Files.writeString(partial, Integer.toString(port), StandardCharsets.US_ASCII);
        Files.move(partial, portFile, StandardCopyOption.ATOMIC_MOVE);
        System.out.println("medsearch test node: http://127.0.0.1:" + port);
        System.out.flush();
        waitForEndOfInput(System.in);
        System.exit(0);  // runs the shutdown hook
    }

    private static void waitForEndOfInput(final InputStream in) {
        final byte[] buffer = new byte[256];
        try {
            while (in.read(buffer) >= 0) {
                // Input is ignored: only its end matters.
            }
        } catch (IOException e) {
            // A broken pipe means the parent is gone: stop as at end of input.
        }
    }

    private static void stop(final OpenSearchRunner runner) {
        try {
            runner.close();
        } catch (IOException | RuntimeException e) {
            System.err.println("closing the node failed: " + e);
        }
        try {
            runner.clean();
        } catch (RuntimeException e) {
            System.err.println("deleting the node's home failed: " + e);
        }
    }
}
