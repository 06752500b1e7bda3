package dev.switchyard.testing;

import java.nio.file.Path;
import java.time.Duration;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.neo4j.configuration.GraphDatabaseInternalSettings;
import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.connectors.HttpConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.graphdb.GraphDatabaseService;
import org.neo4j.io.ByteUnit;
import org.neo4j.logging.Level;
import org.neo4j.logging.log4j.Log4jLogProvider;

/**
 * Neo4j community edition, embedded, reachable over Bolt on loopback only.
 *
 * <p>Usage: {@code EmbeddedNeo4j DATA_DIR PORT}. Authentication is disabled, so a
 * client may present any user name and password. The process runs until it gets
 * SIGTERM/SIGINT, at which point a shutdown hook closes the databases cleanly.
 *
 * <p>Once the default database accepts transactions a single line starting with
 * {@code READY} is printed to stdout; scripts/services waits for it.
 *
 * <p>Optional system properties: {@code neo4j.pagecache} (default {@code 64m}).
 */
public final class EmbeddedNeo4j {
    private EmbeddedNeo4j() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: EmbeddedNeo4j DATA_DIR PORT");
            System.exit(2);
        }
        Path home = Path.of(args[0]).toAbsolutePath();
        int port = Integer.parseInt(args[1]);
        long pageCache = ByteUnit.parse(System.getProperty("neo4j.pagecache", "64m"));

        long started = System.nanoTime();
        DatabaseManagementService dbms = new DatabaseManagementServiceBuilder(home)
                // Neo4j's user-facing log (startup, errors) goes to our stdout log;
                // the verbose debug.log stays under DATA_DIR/logs.
                .setUserLogProvider(new Log4jLogProvider(System.out, Level.INFO))
                .setConfig(BoltConnector.enabled, true)
                .setConfig(BoltConnector.listen_address, new SocketAddress("127.0.0.1", port))
                .setConfig(BoltConnector.advertised_address, new SocketAddress("127.0.0.1", port))
                .setConfig(HttpConnector.enabled, false)
                .setConfig(GraphDatabaseSettings.auth_enabled, false)
                .setConfig(GraphDatabaseSettings.pagecache_memory, pageCache)
                // No usage reports: the test machine must not call out.
                .setConfig(GraphDatabaseSettings.udc_enabled, false)
                // Keep transaction logs small; this is throwaway test data.
                .setConfig(GraphDatabaseSettings.keep_logical_logs, "false")
                // Bolt's Netty event loops otherwise wait a quiet period of several
                // seconds each on shutdown, which makes stop/restart take ~10 s.
                .setConfig(GraphDatabaseInternalSettings.netty_server_shutdown_quiet_period, 0)
                .setConfig(GraphDatabaseInternalSettings.netty_server_shutdown_timeout, Duration.ofSeconds(2))
                .build();

        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            System.out.println("STOPPING neo4j");
            System.out.flush();
            dbms.shutdown();
            stopped.countDown();
        }, "neo4j-shutdown"));

        GraphDatabaseService db = dbms.database(GraphDatabaseSettings.DEFAULT_DATABASE_NAME);
        if (!db.isAvailable(TimeUnit.MINUTES.toMillis(2))) {
            System.err.println("default database did not become available");
            System.exit(1);
        }
        db.executeTransactionally("RETURN 1");

        long millis = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - started);
        System.out.printf("READY bolt://127.0.0.1:%d (neo4j %s, started in %d ms, pid %d)%n",
                port, neo4jVersion(), millis, ProcessHandle.current().pid());
        System.out.flush();

        stopped.await();
    }

    private static String neo4jVersion() {
        Package p = DatabaseManagementServiceBuilder.class.getPackage();
        String v = p == null ? null : p.getImplementationVersion();
        return v == null ? "unknown version" : v;
    }
}
