// The broker's request counts by type, read over JMX: `java benchmarks/BrokerRequests.java PORT`
// (the JDK's single-file source launcher; benchmarks/broker_requests.py starts the JMX agent on the
// broker with jcmd and runs this). Prints "type<TAB>count" lines, cumulative since the broker
// started: RequestMetrics RequestsPerSec per request type (all versions summed), and the records
// appended to every topic (MessagesInPerSec), as "records_in".
import java.util.Map;
import java.util.TreeMap;
import javax.management.MBeanServerConnection;
import javax.management.ObjectName;
import javax.management.remote.JMXConnector;
import javax.management.remote.JMXConnectorFactory;
import javax.management.remote.JMXServiceURL;

public class BrokerRequests {
    public static void main(String[] args) throws Exception {
        String url = "service:jmx:rmi:///jndi/rmi://127.0.0.1:" + args[0] + "/jmxrmi";
        try (JMXConnector connector = JMXConnectorFactory.connect(new JMXServiceURL(url))) {
            MBeanServerConnection server = connector.getMBeanServerConnection();
            Map<String, Long> counts = new TreeMap<>();
            ObjectName requests = new ObjectName("kafka.network:type=RequestMetrics,name=RequestsPerSec,*");
            for (ObjectName name : server.queryNames(requests, null)) {
                long count = ((Number) server.getAttribute(name, "Count")).longValue();
                counts.merge(name.getKeyProperty("request"), count, Long::sum);
            }
            ObjectName in = new ObjectName("kafka.server:type=BrokerTopicMetrics,name=MessagesInPerSec");
            if (server.isRegistered(in)) {
                counts.put("records_in", ((Number) server.getAttribute(in, "Count")).longValue());
            }
            for (Map.Entry<String, Long> entry : counts.entrySet()) {
                System.out.println(entry.getKey() + "\t" + entry.getValue());
            }
        }
    }
}
