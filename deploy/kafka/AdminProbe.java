// What a Kafka client sees of a cluster, asked with the broker's own Admin client (the cached
// jars), for cluster.sh and the cluster tests; run as a source file: java -cp "$libs/*" AdminProbe.java
//   brokers BOOTSTRAP COUNT TIMEOUT_S       exit 0 once the metadata lists COUNT brokers (alive,
//                                           unfenced), else 1 after TIMEOUT_S, naming those seen
//   transaction-coordinator BOOTSTRAP ID... prints "ID BROKER" for each transactional id (that
//                                           of a producer that initialised it): the broker that
//                                           coordinates it, as kafka-transactions.sh describe
//                                           shows it (the broker's FindCoordinator answer)
import java.util.List;
import java.util.Properties;
import java.util.stream.Collectors;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.common.Node;

public class AdminProbe {
  public static void main(String[] args) throws Exception {
    Properties props = new Properties();
    props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[1]);
    props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
    props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "10000");
    try (Admin admin = Admin.create(props)) {
      switch (args[0]) {
        case "brokers" -> System.exit(brokers(admin, Integer.parseInt(args[2]), Long.parseLong(args[3])));
        case "transaction-coordinator" -> {
          List<String> ids = List.of(args).subList(2, args.length);
          var described = admin.describeTransactions(ids);
          for (String id : ids) System.out.println(id + " " + described.description(id).get().coordinatorId());
        }
        default -> throw new IllegalArgumentException("unknown command " + args[0]);
      }
    }
  }

  static int brokers(Admin admin, int count, long timeoutS) throws InterruptedException {
    long deadline = System.nanoTime() + timeoutS * 1_000_000_000L;
    String seen = "none";
    while (System.nanoTime() < deadline) {
      try {
        List<Node> nodes = List.copyOf(admin.describeCluster().nodes().get());
        if (nodes.size() >= count) return 0;
        seen = nodes.stream().map(Node::idString).sorted().collect(Collectors.joining(","));
      } catch (Exception e) {
        seen = "none (" + e.getMessage() + ")";
      }
      Thread.sleep(500);
    }
    System.err.println("brokers in the metadata after " + timeoutS + " s: " + seen + ", expected " + count);
    return 1;
  }
}
