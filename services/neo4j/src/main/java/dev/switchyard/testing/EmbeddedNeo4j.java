package dev.switchyard.testing;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.neo4j.configuration.GraphDatabaseInternalSettings;
import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.connectors.HttpConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.configuration.ssl.ClientAuth;
import org.neo4j.configuration.ssl.SslPolicyConfig;
import org.neo4j.configuration.ssl.SslPolicyScope;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.graphdb.GraphDatabaseService;
import org.neo4j.io.ByteUnit;
import org.neo4j.logging.Level;
import org.neo4j.logging.log4j.Log4jLogProvider;

/**
 * Neo4j community edition, embedded, reachable over Bolt on loopback only.
 *
 * <p>Usage: {@code EmbeddedNeo4j DATA_DIR PORT [OPTION...]}. With no option,
 * authentication is disabled (a client may present any user name and password)
 * and Bolt is plain text. The process runs until it gets SIGTERM/SIGINT, at
 * which point a shutdown hook closes the databases cleanly.
 *
 * <p>Options (scripts/secure-services uses them; scripts/services uses none):
 * <ul>
 *   <li>{@code --password-file FILE}: enable authentication; the user {@code neo4j}
 *       gets the password in FILE (its first line, at least 8 characters), with no
 *       forced change. It is set through the system database before READY, on
 *       every start, so a changed file takes effect on the next start.
 *   <li>{@code --tls-dir DIR}: enable the Bolt SSL policy with base directory DIR,
 *       which holds {@code private.key} (PEM, PKCS#8, unencrypted),
 *       {@code public.crt} (PEM, the server certificate, optionally followed by
 *       its chain), {@code trusted/} (CA certificates for client certificates)
 *       and {@code revoked/} (CRLs; may be empty).
 *   <li>{@code --tls-level REQUIRED|OPTIONAL} ({@code server.bolt.tls_level},
 *       default REQUIRED with --tls-dir).
 *   <li>{@code --client-auth NONE|OPTIONAL|REQUIRE} (the policy's
 *       {@code client_auth}, default NONE).
 * </ul>
 *
 * <p>Once the default database accepts transactions a single line starting with
 * {@code READY} is printed to stdout; scripts/services waits for it.
 *
 * <p>Optional system properties: {@code neo4j.pagecache} (default {@code 64m}).
 */
public final class EmbeddedNeo4j {
    private EmbeddedNeo4j() {}

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            usage();
        }
        Path home = Path.of(args[0]).toAbsolutePath();
        int port = Integer.parseInt(args[1]);
        long pageCache = ByteUnit.parse(System.getProperty("neo4j.pagecache", "64m"));

        String password = null;
        Path tlsDir = null;
        BoltConnector.EncryptionLevel tlsLevel = BoltConnector.EncryptionLevel.REQUIRED;
        ClientAuth clientAuth = ClientAuth.NONE;
        for (int i = 2; i < args.length; i += 2) {
            if (i + 1 >= args.length) {
                usage();
            }
            String value = args[i + 1];
            switch (args[i]) {
                case "--password-file" -> password = readPassword(Path.of(value));
                case "--tls-dir" -> tlsDir = Path.of(value).toAbsolutePath();
                case "--tls-level" -> tlsLevel = BoltConnector.EncryptionLevel.valueOf(value.toUpperCase(Locale.ROOT));
                case "--client-auth" -> clientAuth = ClientAuth.valueOf(value.toUpperCase(Locale.ROOT));
                default -> usage();
            }
        }

        long started = System.nanoTime();
        DatabaseManagementServiceBuilder builder = new DatabaseManagementServiceBuilder(home)
                // Neo4j's user-facing log (startup, errors) goes to our stdout log;
                // the verbose debug.log stays under DATA_DIR/logs.
                .setUserLogProvider(new Log4jLogProvider(System.out, Level.INFO))
                .setConfig(BoltConnector.enabled, true)
                .setConfig(BoltConnector.listen_address, new SocketAddress("127.0.0.1", port))
                .setConfig(BoltConnector.advertised_address, new SocketAddress("127.0.0.1", port))
                .setConfig(HttpConnector.enabled, false)
                .setConfig(GraphDatabaseSettings.auth_enabled, password != null)
                .setConfig(GraphDatabaseSettings.pagecache_memory, pageCache)
                // No usage reports: the test machine must not call out.
                .setConfig(GraphDatabaseSettings.udc_enabled, false)
                // Keep transaction logs small; this is throwaway test data.
                .setConfig(GraphDatabaseSettings.keep_logical_logs, "false")
                // Bolt's Netty event loops otherwise wait a quiet period of several
                // seconds each on shutdown, which makes stop/restart take ~10 s.
                .setConfig(GraphDatabaseInternalSettings.netty_server_shutdown_quiet_period, 0)
                .setConfig(GraphDatabaseInternalSettings.netty_server_shutdown_timeout, Duration.ofSeconds(2));
        if (tlsDir != null) {
            SslPolicyConfig bolt = SslPolicyConfig.forScope(SslPolicyScope.BOLT);
            builder.setConfig(bolt.enabled, true)
                    .setConfig(bolt.base_directory, tlsDir)
                    .setConfig(bolt.client_auth, clientAuth)
                    .setConfig(BoltConnector.encryption_level, tlsLevel);
        }
        DatabaseManagementService dbms = builder.build();

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
        if (password != null) {
            setPassword(dbms, password);
        }

        long millis = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - started);
        String extra = (password != null ? ", auth on" : "")
                + (tlsDir != null ? ", bolt tls " + tlsLevel + ", client auth " + clientAuth : "");
        System.out.printf("READY %s://127.0.0.1:%d (neo4j %s, started in %d ms, pid %d%s)%n",
                tlsDir != null && tlsLevel == BoltConnector.EncryptionLevel.REQUIRED ? "bolt+s" : "bolt",
                port, neo4jVersion(), millis, ProcessHandle.current().pid(), extra);
        System.out.flush();

        stopped.await();
    }

    private static void usage() {
        System.err.println("usage: EmbeddedNeo4j DATA_DIR PORT [--password-file FILE] [--tls-dir DIR]"
                + " [--tls-level REQUIRED|OPTIONAL] [--client-auth NONE|OPTIONAL|REQUIRE]");
        System.exit(2);
    }

    private static String readPassword(Path file) throws Exception {
        String text = Files.readString(file, StandardCharsets.UTF_8);
        int eol = text.indexOf('\n');
        String password = (eol < 0 ? text : text.substring(0, eol)).strip();
        if (password.length() < 8) {
            throw new IllegalArgumentException("the password in " + file + " is shorter than 8 characters");
        }
        return password;
    }

    // Embedded transactions run with full access, so the system database takes
    // the administration command without a login. Setting the password it
    // already has is refused; that is the case on a restart with kept data.
    private static void setPassword(DatabaseManagementService dbms, String password) {
        GraphDatabaseService system = dbms.database(GraphDatabaseSettings.SYSTEM_DATABASE_NAME);
        try {
            system.executeTransactionally(
                    "ALTER USER neo4j SET PASSWORD $password CHANGE NOT REQUIRED", Map.of("password", password));
        } catch (RuntimeException e) {
            String message = String.valueOf(e.getMessage());
            for (Throwable c = e.getCause(); c != null; c = c.getCause()) {
                message += " / " + c.getMessage();
            }
            if (!message.contains("cannot be the same")) {
                throw e;
            }
        }
    }

    private static String neo4jVersion() {
        Package p = DatabaseManagementServiceBuilder.class.getPackage();
        String v = p == null ? null : p.getImplementationVersion();
        return v == null ? "unknown version" : v;
    }
}
